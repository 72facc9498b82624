//! Every latency rule of the session core, in virtual time: each test runs in
//! milliseconds and sleeps never.

mod common;

use std::time::{Duration, Instant};

use cloudplay_host::messages::SessionCommand;
use cloudplay_host::stats::stalled;
use cloudplay_host::stream::{CoreOutput, KEYFRAME_MIN_INTERVAL, MAX_CATCH_UP_TICKS, Schedule};
use common::Harness;

const TICK_MS: f64 = 1000.0 / 60.0;
const LONG: Duration = Duration::from_secs(3600);

#[test]
fn ticks_follow_the_grid_and_catch_up_at_most_four_at_once() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.run_until(h.at(1000.0));
    let ticks = h.ticks();
    assert!((60..=61).contains(&ticks), "a second of the grid is 60 ticks: {ticks}");
    // The thread stalls for 10 ticks' time: 4 run back to back, then the grid restarts.
    let stalled_until = h.now + Duration::from_secs_f64(10.0 * TICK_MS / 1000.0);
    h.jump(stalled_until);
    assert_eq!(h.ticks() - ticks, MAX_CATCH_UP_TICKS as usize);
    assert_eq!(h.deadline, stalled_until + Duration::from_secs(1) / 60, "the next tick is one tick from now");
}

#[test]
fn a_frame_more_than_an_interval_late_is_skipped() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(100.0));
    let before = h.videos_since(h.start).len();
    // Two and a half frame intervals without a wake-up: one frame, not three.
    let late = h.now + Duration::from_secs_f64(2.5 * TICK_MS / 1000.0);
    h.jump(late);
    assert_eq!(h.videos_since(h.start).len() - before, 1, "the missed frames are skipped");
    assert!(h.deadline > late, "and the next one follows the next tick");
}

#[test]
fn frames_are_made_only_while_somebody_watches() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.run_until(h.at(500.0));
    assert!(h.videos_since(h.start).is_empty());
    assert!(h.ticks() >= 30, "the game ticks all the same");
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(600.0));
    let videos = h.videos_since(h.start);
    assert!(videos.len() >= 5);
    assert!(videos[0].1.keyframe, "a new peer gets a keyframe first");
}

#[test]
fn at_most_one_forced_keyframe_per_300_ms() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    for i in 0..60 {
        h.send(SessionCommand::KeyframeRequest);
        h.run_until(h.at(i as f64 * TICK_MS + 1.0));
    }
    let keyframes: Vec<_> =
        h.videos_since(h.start).into_iter().filter(|(_, v)| v.keyframe).map(|(at, _)| at).collect();
    assert!(keyframes.len() <= 4, "a second of requests, {} keyframes", keyframes.len());
    assert!(keyframes.len() >= 3, "requests are still answered: {}", keyframes.len());
    for pair in keyframes.windows(2) {
        assert!(pair[1] - pair[0] >= KEYFRAME_MIN_INTERVAL, "{:?} apart", pair[1] - pair[0]);
    }
}

#[test]
fn a_dropped_frame_makes_the_next_a_keyframe() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(500.0));
    let since = h.now;
    assert!(!h.videos_since(h.at(400.0)).iter().any(|(_, v)| v.keyframe), "steady state: no keyframes");
    h.core.video_dropped();
    h.run_until(h.at(520.0));
    let next = h.videos_since(since);
    assert!(next.first().is_some_and(|(_, v)| v.keyframe), "the frame after a drop is a keyframe");
    assert_eq!(h.stats.frames_dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_session_nobody_watches_ends_after_the_idle_timeout() {
    let mut h = Harness::new(Schedule::FixedTick, 60, Duration::from_secs(5));
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(10_000.0));
    assert!(!h.ended(), "a watched session lives on");
    h.send(SessionCommand::PeerLeft { peer: 1 });
    let left = h.now;
    h.run_until(left + Duration::from_millis(4_990));
    assert!(!h.ended(), "not before the timeout");
    h.run_until(left + Duration::from_millis(5_001));
    let ended_at = h.outputs.iter().find(|(_, o)| matches!(o, CoreOutput::Ended(None))).map(|(at, _)| *at);
    assert_eq!(ended_at, Some(left + Duration::from_secs(5)), "at the timeout, woken for it");
}

#[test]
fn the_encoder_follows_the_slowest_peer() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    for peer in [1, 2] {
        h.send(SessionCommand::PeerJoined { peer });
    }
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 4_000_000, viewer: false });
    h.send(SessionCommand::BitrateEstimate { peer: 2, bps: 800_000, viewer: false });
    let stats = h.stats.clone();
    let bitrate = move || stats.bitrate_bps.load(std::sync::atomic::Ordering::Relaxed);
    assert!(bitrate() <= 800_000, "the slow peer sets the rate: {}", bitrate());
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 5_000_000, viewer: false });
    assert!(bitrate() <= 800_000, "a faster estimate from the fast peer changes nothing: {}", bitrate());
    h.send(SessionCommand::PeerLeft { peer: 2 });
    h.run_until(h.at(5_000.0));
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 5_000_000, viewer: false });
    assert!(bitrate() > 800_000, "with the slow peer gone the rate climbs: {}", bitrate());
}

/// Estimates come from RTCP the peer sends: one that lies (no bandwidth at all, or more
/// than any link has) moves the encoder only within its bounds.
#[test]
fn an_absurd_estimate_keeps_the_encoder_within_its_bounds() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    let stats = h.stats.clone();
    let bitrate = move || stats.bitrate_bps.load(std::sync::atomic::Ordering::Relaxed);
    let cap = 5_000_000; // the harness's session cap
    for (second, bps) in [u64::MAX, 0, u64::MAX, 1].into_iter().enumerate() {
        for half in 0..20 {
            h.send(SessionCommand::BitrateEstimate { peer: 1, bps, viewer: false });
            h.run_until(h.at(second as f64 * 10_000.0 + half as f64 * 500.0));
        }
        let now = bitrate();
        assert!((300_000..=cap).contains(&now), "estimate {bps}: the encoder at {now}");
        if bps == 0 || bps == 1 {
            assert_eq!(now, 300_000, "no bandwidth claimed: the floor, not zero");
        } else {
            assert_eq!(now, cap, "any bandwidth claimed: the session's cap, no more");
        }
    }
    // The last run ends at 39.5 s: a tick at 0 and one every 1/60 s after.
    assert_eq!(h.ticks(), 39_500 * 60 / 1000 + 1, "and the game ticked on at its rate throughout");
}

#[test]
fn a_low_bitrate_lowers_the_picture_and_a_recovered_path_restores_it() {
    let mut h = Harness::sized(Schedule::FixedTick, 1280, 720, 60);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(200.0));
    let mitigation = |h: &Harness| h.stats.mitigation.load(std::sync::atomic::Ordering::Relaxed);
    // 350 kbit/s (a target of 300) pays for neither 720p60 (830) nor 360p60 (330): half
    // the size and half the rate, once it has held for 500 ms.
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 350_000, viewer: false });
    h.run_until(h.at(650.0));
    assert_eq!(mitigation(&h), 0, "not before the hold");
    h.run_until(h.at(800.0));
    assert_eq!(mitigation(&h), 2);
    h.run_until(h.at(1_800.0));
    let since_hold = h.videos_since(h.at(650.0));
    let lowered =
        since_hold.iter().position(|(_, v)| v.keyframe).expect("the new size starts with a keyframe");
    let mut decoder = cloudplay_media::H264Decoder::new().unwrap();
    for (_, video) in &since_hold[lowered..] {
        let size = decoder.decode(&video.data, |p| (p.width, p.height)).unwrap();
        assert_eq!(size, Some((640, 360)));
    }
    let second = h.videos_since(h.at(800.0)).len();
    assert!((29..=31).contains(&second), "30 frames a second: {second}");
    let lowered = since_hold[lowered].0;
    // The path recovers: the rate climbs in steps, the picture follows after 2 s above.
    for i in 0..100 {
        h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 10_000_000, viewer: false });
        h.run_until(h.at(1_800.0 + 100.0 * i as f64));
    }
    assert_eq!(mitigation(&h), 0);
    let since = h.now;
    h.run_until(since + Duration::from_secs(1));
    let recent = h.videos_since(since);
    assert!((59..=61).contains(&recent.len()), "60 frames a second again: {}", recent.len());
    let videos = h.videos_since(lowered);
    let restored = videos.iter().rposition(|(_, v)| v.keyframe).unwrap();
    let mut decoder = cloudplay_media::H264Decoder::new().unwrap();
    for (_, video) in &videos[restored..] {
        let size = decoder.decode(&video.data, |p| (p.width, p.height)).unwrap();
        assert_eq!(size, Some((1280, 720)));
    }
}

#[test]
fn a_viewer_on_a_worse_link_does_not_set_the_players_rate() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    for peer in [1, 2] {
        h.send(SessionCommand::PeerJoined { peer });
    }
    let stats = h.stats.clone();
    let bitrate = move || stats.bitrate_bps.load(std::sync::atomic::Ordering::Relaxed);
    let start = bitrate();
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 4_000_000, viewer: false });
    h.send(SessionCommand::BitrateEstimate { peer: 2, bps: 500_000, viewer: true });
    assert!(
        bitrate() >= start.min(4_000_000) && bitrate() > 500_000,
        "the player's link sets it: {}",
        bitrate()
    );
    h.send(SessionCommand::PeerLeft { peer: 1 });
    assert!(bitrate() <= 500_000, "with only the viewer left, the viewer's: {}", bitrate());
}

#[test]
fn the_probe_reports_an_input_only_after_the_tick_that_applied_it() {
    // Frames at 120 per second fall between ticks: a frame made after the input arrived
    // but before a tick applied it must not claim it.
    let mut h = Harness::new(Schedule::FixedTick, 120, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(100.0));
    h.probes();
    let pressed_at = h.now + Duration::from_millis(2);
    h.run_until(pressed_at);
    let seq = h.press();
    let ticks_at_press = h.ticks();
    h.run_until(h.at(200.0));
    let probes = h.probes();
    let first_claiming = probes.iter().find(|(_, p)| p.input_seq >= seq).expect("the input shows");
    assert!(first_claiming.0 > pressed_at);
    assert!(h.ticks() > ticks_at_press);
    let applied_ticks = h.seen.lock().unwrap().ticks.iter().position(|&n| n > 0).unwrap();
    assert_eq!(applied_ticks, ticks_at_press, "the next tick applied it");
    let between: Vec<_> =
        probes.iter().filter(|(at, _)| *at > pressed_at && *at < first_claiming.0).collect();
    assert!(!between.is_empty(), "a frame was made between the input and its tick");
    assert!(between.iter().all(|(_, p)| p.input_seq < seq), "and it did not claim the input");
}

#[test]
fn fixed_tick_makes_an_input_wait_for_the_grid() {
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(100.0) + Duration::from_millis(3));
    let (ticks, videos) = (h.ticks(), h.videos_since(h.start).len());
    h.press();
    assert_eq!(
        (h.ticks(), h.videos_since(h.start).len()),
        (ticks, videos),
        "nothing happens before the grid"
    );
}

#[test]
fn latency_first_runs_the_inputs_tick_and_frame_at_once_within_its_slot() {
    let mut h = Harness::new(Schedule::LatencyFirst, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(100.0) + Duration::from_millis(3));
    let (ticks, since) = (h.ticks(), h.now);
    let seq = h.press();
    assert_eq!(h.ticks(), ticks + 1, "the input's tick ran at once");
    let now_videos = h.videos_since(since);
    assert_eq!(now_videos.len(), 1, "and its frame");
    assert_eq!(now_videos[0].0, since, "at the moment the input came");
    let probes = h.probes();
    assert!(probes.last().is_some_and(|(_, p)| p.input_seq == seq), "the frame shows the input");
    // A second input in the same slot waits: a tick is pulled forward one slot at most.
    h.run_until(since + Duration::from_millis(2));
    h.press();
    assert_eq!(h.ticks(), ticks + 1, "no second early tick in one slot");
}

#[test]
fn latency_first_keeps_the_games_rate() {
    // Inputs every 5 ms for a second pull many ticks forward; the game still ticks 60
    // times a second, once per slot.
    let mut h = Harness::new(Schedule::LatencyFirst, 60, LONG);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    for i in 1..=200 {
        h.run_until(h.at(i as f64 * 5.0));
        h.press();
    }
    let ticks = h.ticks();
    assert!((60..=62).contains(&ticks), "{ticks} ticks in a second");
    let frames = h.videos_since(h.start).len();
    assert!(frames <= 62, "no more frames than ticks: {frames}");
}

#[test]
fn a_wall_clock_step_does_not_look_like_a_stall() {
    // The watchdog reads monotonic microseconds; the wall clock is not consulted at all.
    let limit = Duration::from_secs(10);
    assert!(!stalled(0, 50_000_000, limit), "never ticked: not stalled");
    assert!(!stalled(5_000_000, 14_000_000, limit));
    assert!(stalled(5_000_000, 15_000_001, limit));
    assert!(!stalled(5_000_000, 4_000_000, limit), "a clock that reads earlier is no stall");
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    h.run_until(h.at(50.0));
    let last = h.stats.last_tick_us.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(last, cloudplay_host::stats::monotonic_us(h.at(50.0)), "the core stamps its virtual now");
}

#[test]
fn a_stop_ends_the_session_at_once() {
    let mut h = Harness::new(Schedule::LatencyFirst, 60, LONG);
    h.run_until(h.at(50.0));
    h.send(SessionCommand::Stop);
    assert!(h.ended());
}

/// The picture count of the first frame rendered after `from` that shows `reacted` inputs.
fn first_showing(h: &Harness, from: usize, reacted: u32) -> Option<usize> {
    h.seen.lock().unwrap().rendered[from..].iter().position(|&n| n >= reacted)
}

#[test]
fn run_ahead_hides_a_games_own_frame_of_lag() {
    for (run_ahead, frames_late) in [(0, 1), (1, 0)] {
        let mut h = Harness::with_game(Schedule::FixedTick, 60, LONG, true, run_ahead);
        h.send(SessionCommand::PeerJoined { peer: 1 });
        h.run_until(h.at(100.0) + Duration::from_millis(3));
        let rendered_before = h.seen.lock().unwrap().rendered.len();
        h.press();
        h.run_until(h.at(200.0));
        // Pictures after the input's tick: the first that shows the reaction.
        let shown = first_showing(&h, rendered_before, 1).expect("the game reacts");
        assert_eq!(shown, frames_late, "run-ahead {run_ahead}: the reaction shows {shown} frames late");
    }
}

#[test]
fn run_ahead_leaves_the_game_on_its_grid() {
    let mut plain = Harness::with_game(Schedule::FixedTick, 60, LONG, true, 0);
    let mut ahead = Harness::with_game(Schedule::FixedTick, 60, LONG, true, 2);
    for h in [&mut plain, &mut ahead] {
        h.send(SessionCommand::PeerJoined { peer: 1 });
        for i in 1..=20 {
            h.run_until(h.at(i as f64 * 37.0));
            h.press();
        }
        h.run_until(h.at(1000.0));
    }
    assert_eq!(plain.core.ticks(), ahead.core.ticks(), "the same ticks on the grid");
    assert_eq!(
        plain.core.game().save_state(),
        ahead.core.game().save_state(),
        "and the same state: what ran ahead was undone"
    );
}

#[test]
fn the_in_game_save_is_read_every_interval_and_once_more_at_the_end() {
    let mut h = Harness::with_in_game_saves(Duration::from_secs(20), Duration::from_secs(3600));
    h.run_until(h.at(61_000.0));
    let reads: Vec<_> = h.in_game_saves().iter().map(|(at, _)| at.duration_since(h.start)).collect();
    assert_eq!(reads, [20, 40, 60].map(Duration::from_secs), "every 20 s of the game's own clock");
    let ticks_at_60 = h.in_game_saves()[2].1;
    assert!((3599..=3601).contains(&ticks_at_60), "the save as the game is at that moment: {ticks_at_60}");
    h.send(SessionCommand::Stop);
    let saves = h.in_game_saves();
    assert_eq!(saves.len(), 4, "a last read as the session ends");
    let last = h.outputs.iter().rposition(|(_, o)| matches!(o, CoreOutput::InGameSave(_))).unwrap();
    let ended = h.outputs.iter().position(|(_, o)| matches!(o, CoreOutput::Ended(_))).unwrap();
    assert!(last < ended, "the last save comes before the end");
    assert!(saves[3].1 >= ticks_at_60);
}

#[test]
fn a_session_that_idles_out_still_hands_over_its_last_save() {
    let mut h = Harness::with_in_game_saves(Duration::from_secs(20), Duration::from_secs(5));
    h.run_until(h.at(6_000.0));
    assert!(h.ended());
    assert_eq!(h.in_game_saves().len(), 1, "no interval passed, but the end reads it once");
}

#[test]
fn the_picture_follows_the_players_screens_within_the_games_size() {
    use cloudplay_proto::ProbeStrip;
    let mut h = Harness::sized(Schedule::FixedTick, 1280, 720, 60);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.send(SessionCommand::PeerJoined { peer: 2 });
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 10_000_000, viewer: false });
    h.run_until(h.at(100.0));
    // What each frame since `since` decodes to, and whether its probe strip reads there.
    let decoded_since = |h: &Harness, since: Instant| {
        let mut decoder = cloudplay_media::H264Decoder::new().unwrap();
        let videos = h.videos_since(since);
        let first = videos.iter().position(|(_, v)| v.keyframe).expect("a keyframe at the new size");
        videos[first..]
            .iter()
            .map(|(_, video)| {
                decoder
                    .decode(&video.data, |p| {
                        let strip = ProbeStrip::for_width(p.width);
                        ((p.width, p.height), strip.read_luma(p.luma, p.width, p.height, p.stride).is_some())
                    })
                    .unwrap()
                    .expect("a picture")
            })
            .collect::<Vec<_>>()
    };
    // A phone's area (a 16:9 picture fits its width): 854×480, not a halving.
    let since = h.now;
    h.send(SessionCommand::ViewSize { peer: 1, width: 854, height: 1000 });
    h.run_until(h.at(400.0));
    let frames = decoded_since(&h, since);
    assert!(frames.len() >= 15, "{}", frames.len());
    assert!(frames.iter().all(|&f| f == ((854, 480), true)), "854×480 with a readable probe: {frames:?}");
    // A second player on a bigger screen: the largest view wins, up to the game's size.
    let since = h.now;
    h.send(SessionCommand::ViewSize { peer: 2, width: 3840, height: 2160 });
    h.run_until(h.at(700.0));
    assert!(decoded_since(&h, since).iter().all(|&f| f == ((1280, 720), true)));
    // That player leaves: back to the phone's size. A tiny view is held to 320 wide.
    let since = h.now;
    h.send(SessionCommand::PeerLeft { peer: 2 });
    h.run_until(h.at(1_000.0));
    assert!(decoded_since(&h, since).iter().all(|&f| f == ((854, 480), true)));
    let since = h.now;
    h.send(SessionCommand::ViewSize { peer: 1, width: 100, height: 60 });
    h.run_until(h.at(1_300.0));
    assert!(decoded_since(&h, since).iter().all(|&f| f == ((320, 180), true)));
    // Mitigation halves the view, not the game's size.
    let since = h.now;
    h.send(SessionCommand::ViewSize { peer: 1, width: 854, height: 480 });
    h.send(SessionCommand::BitrateEstimate { peer: 1, bps: 350_000, viewer: false });
    h.run_until(h.at(2_500.0));
    let sizes: Vec<_> = decoded_since(&h, since).into_iter().map(|(size, _)| size).collect();
    assert_eq!(sizes.last(), Some(&(426, 240)), "half of the view");
}

/// 20 ms of a tone as a browser's microphone sends it.
fn microphone_packet() -> std::sync::Arc<[u8]> {
    let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Voip).unwrap();
    let tone: Vec<f32> = (0..960).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    let mut packet = vec![0u8; 1500];
    let len = encoder.encode(&tone, 960, &mut packet).unwrap();
    packet[..len].into()
}

#[test]
fn one_players_microphone_is_heard_at_a_time_until_they_fall_silent_or_leave() {
    use cloudplay_host::microphone::MICROPHONE_HOLD;
    let mut h = Harness::new(Schedule::FixedTick, 60, LONG);
    let packet = microphone_packet();
    let refused = |h: &Harness| h.stats.microphone_refused.load(std::sync::atomic::Ordering::Relaxed);
    let heard = |h: &Harness| h.seen.lock().unwrap().heard;
    let speak = |h: &mut Harness, peer: u64, packets: usize| {
        for _ in 0..packets {
            h.send(SessionCommand::Microphone { peer, packet: packet.clone(), captured: None });
            let next = h.now + Duration::from_millis(20);
            h.run_until(next);
        }
    };
    for peer in [1, 2] {
        h.send(SessionCommand::PeerJoined { peer });
    }
    speak(&mut h, 1, 10);
    let first = heard(&h);
    // Cleaned in whole 10 ms frames: all but the last half frame at most.
    assert!(first >= 9 * 960, "the first player is heard as they speak: {first} samples");
    speak(&mut h, 2, 5);
    assert_eq!(heard(&h), first, "another player is not heard meanwhile");
    assert_eq!(refused(&h), 5, "and counted");
    // The first player falls silent: the microphone is free after the hold.
    let later = h.now + MICROPHONE_HOLD;
    h.run_until(later);
    speak(&mut h, 2, 5);
    assert!(heard(&h) >= first + 4 * 960, "the second player is heard");
    // Leaving frees it at once.
    h.send(SessionCommand::PeerLeft { peer: 2 });
    let before = heard(&h);
    speak(&mut h, 1, 5);
    assert!(heard(&h) >= before + 4 * 960, "the first player is heard again");
    // Noise suppression off for a player: their samples pass without waiting for a frame.
    h.send(SessionCommand::NoiseSuppression { peer: 1, on: false });
    let before = heard(&h);
    speak(&mut h, 1, 1);
    assert!(heard(&h) >= before + 960, "unsuppressed samples are handed on whole");
    assert!(h.stats.microphone_summary().processing.samples >= 20, "each packet's processing is timed");
}
