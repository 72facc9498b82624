//! `cloudplay bench --microphone`: a player's microphone on the host. Decoding and noise
//! suppression per packet and as a share of a core per speaking player, and the session's
//! sound server from the host's hand-off to a game recording its default input. The
//! browser's part (capture to the host's hand-off) is `e2e/microphone-bench.mjs`.

use std::time::{Duration, Instant};

use anyhow::Context;
use cloudplay_host::stats::percentiles;
use cloudplay_media::Microphone;

/// `seconds` of speech-like bursts in white noise, as a browser sends them (Opus, 20 ms).
fn voice_packets(seconds: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Voip)
        .map_err(|e| anyhow::anyhow!("opus: {e}"))?;
    encoder.bitrate_bps = 32_000;
    let mut seed = 0x9e37_79b9_u32;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as f32 / u32::MAX as f32 * 2.0 - 1.0
    };
    let mut buffer = vec![0u8; 1500];
    let mut packets = Vec::new();
    for frame in 0..seconds * 50 {
        let talking = (frame / 25) % 2 == 1;
        let pcm: Vec<f32> = (0..960u64)
            .map(|i| {
                let t = (frame * 960 + i) as f32 / 48_000.0;
                let voice = if talking { 0.3 * (2.0 * std::f32::consts::PI * 190.0 * t).sin() } else { 0.0 };
                voice + 0.03 * noise()
            })
            .collect();
        let len = encoder.encode(&pcm, 960, &mut buffer).map_err(|e| anyhow::anyhow!("opus: {e}"))?;
        packets.push(buffer[..len].to_vec());
    }
    Ok(packets)
}

pub fn microphone(seconds: u64) -> anyhow::Result<()> {
    let packets = voice_packets(seconds.max(1))?;
    let audio_seconds = packets.len() as f64 * 0.02;
    println!("Microphone on the host: {audio_seconds:.0} s of a voice, 20 ms Opus packets\n");
    println!("| | per packet p50 | p95 | p99 | one core's share per speaking player |");
    println!("|---|---|---|---|---|");
    for suppression in [false, true] {
        let mut microphone = Microphone::new().context("decoder")?;
        microphone.set_suppression(suppression);
        let mut times = Vec::with_capacity(packets.len());
        let started = Instant::now();
        for packet in &packets {
            let at = Instant::now();
            microphone.push(packet).context("decoding")?;
            times.push(at.elapsed().as_micros() as u32);
        }
        let busy = started.elapsed().as_secs_f64();
        let summary = percentiles(&mut times);
        let name = if suppression { "decode + noise suppression" } else { "decode only" };
        println!(
            "| {name} | {} µs | {} µs | {} µs | {:.2} % |",
            summary.p50_us,
            summary.p95_us,
            summary.p99_us,
            100.0 * busy / audio_seconds
        );
    }
    if !cloudplay_runtime::native::audio_available() {
        println!("\nNo PulseAudio here: the sound server's hop is not measured.");
        return Ok(());
    }
    let rounds = (seconds * 3).clamp(20, 200) as usize;
    let hop = cloudplay_runtime::native::microphone_hop(rounds).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!hop.is_empty(), "no click came through the sound server");
    let mut hop_us: Vec<u32> = hop.iter().map(|d| d.as_micros() as u32).collect();
    let summary = percentiles(&mut hop_us);
    let ms = |us: u32| Duration::from_micros(us.into()).as_secs_f64() * 1000.0;
    println!(
        "\nSound server: host hand-off → a game recording its default input (10 ms latency), {} clicks\n",
        hop.len()
    );
    println!("| p50 | p95 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        ms(summary.p50_us),
        ms(summary.p95_us),
        ms(summary.p99_us),
        ms(summary.max_us)
    );
    Ok(())
}
