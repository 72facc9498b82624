// Browser benchmark on bad networks: for each scenario, `cloudplay netem` relays the
// server's media port through an emulated path (the server advertises the relay as its
// candidate), headless Chromium plays the built-in game, and a table shows what the player
// got: frames shown per second, gaps between frames, click-to-photon and first frame.
//
//   cargo build --release && npm --prefix e2e run network-bench
//
// Options (environment): SCENARIOS (keys, comma-separated; default all of
// `cloudplay netem`'s), SECONDS measured per scenario (default 15), WIDTH/HEIGHT (default
// 1280x720), CLOUDPLAY_BIN.
import { launch, waitForStats } from './browser.mjs';
import { serve } from './processes.mjs';

const scenarios = (process.env.SCENARIOS || 'clean,loss-5,bursts-2,cap-1.5,cap-steps,outage-2').split(',');
const seconds = Number(process.env.SECONDS || 15);
const [width, height] = [Number(process.env.WIDTH || 1280), Number(process.env.HEIGHT || 720)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (values, q) => {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * q))];
};

// A figure of one session at the server's /metrics.
async function metric(url, name, session) {
  const text = await (await fetch(`${url}/metrics`)).text().catch(() => '');
  const prefix = `${name}{session="${session}"} `;
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line ? Number(line.slice(prefix.length)) : NaN;
}

async function measure(key) {
  const server = await serve(key);
  const context = await launch();
  try {
    const page = await context.newPage();
    const started = Date.now();
    await page.goto(`${server.url}/play?game=neon-cycles&width=${width}&height=${height}&probe=1&stats=1`);
    await waitForStats(page, () => window.cloudplayStats.framesDecoded > 0, 30_000, 'first frame');
    const firstFrame = Date.now() - started;
    await page.keyboard.press('Space'); // join
    // Every frame shown, by the time it was presented.
    await page.evaluate(() => {
      const video = document.getElementById('video');
      const shown = (window.benchShown = []);
      // The picture's width at each change (the host lowers it on a poor link).
      const widths = (window.benchWidths = []);
      const onFrame = (now, meta) => {
        shown.push(now);
        if (widths[widths.length - 1] !== meta.width) widths.push(meta.width);
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
      window.cloudplayStats.clickToPhoton.length = 0;
    });
    // What the decoder had done when the measured span began (the overlay's getStats, once a second).
    await sleep(1_100);
    const decoderBefore = await page.evaluate(() => window.cloudplayStats.network);
    const keys = ['ArrowUp', 'ArrowRight', 'ArrowDown', 'ArrowLeft'];
    const until = Date.now() + seconds * 1000;
    // The encoder's target once a second (the server's /metrics), by the scenario's clock.
    const session = await page.evaluate(() => window.cloudplayStats.sessionId);
    const targets = [];
    for (let i = 0; Date.now() < until; i++) {
      await page.keyboard.press(keys[i % keys.length]);
      await sleep(80 + ((i * 37) % 80));
      const second = Math.floor((Date.now() - server.startedAt) / 1000);
      if (targets[second] === undefined) targets[second] = await metric(server.url, 'cloudplay_session_bitrate_bps', session);
    }
    await sleep(1_100); // the overlay's getStats runs once a second
    const { shown, widths, c2p, network, copies } = await page.evaluate(() => ({
      shown: window.benchShown, widths: window.benchWidths, c2p: window.cloudplayStats.clickToPhoton,
      network: window.cloudplayStats.network, copies: window.cloudplayStats.copies,
    }));
    const gaps = shown.slice(1).map((t, i) => t - shown[i]);
    const span = (shown[shown.length - 1] - shown[0]) / 1000;
    // Chromium's own decoder over the same span: frames decoded a second and the mean decode
    // time. Decoded at 60 but shown at less is the machine's compositor, not the path.
    const decoded = network.framesDecoded - (decoderBefore?.framesDecoded || 0);
    const decodedFps = decoded / ((network.at - (decoderBefore?.at || network.at)) / 1000);
    const decodeMs = ((network.decodeSeconds - (decoderBefore?.decodeSeconds || 0)) / Math.max(1, decoded)) * 1000;
    return {
      key, firstFrame, fps: (shown.length - 1) / span, decodedFps, decodeMs, gapsOver100: gaps.filter((g) => g > 100).length,
      widths, maxGap: Math.max(...gaps), c2p50: pct(c2p, 0.5), c2p95: pct(c2p, 0.95), samples: c2p.length, network, copies,
      targets,
    };
  } finally {
    await context.close();
    await server.stop();
  }
}

const rows = [];
for (const key of scenarios) {
  rows.push(await measure(key));
}
console.log(`\nBrowser (headless Chromium, software decode) through cloudplay netem, Neon Cycles ${width}x${height} at 60 fps, ${seconds} s each:\n`);
console.log('| scenario | fps shown | fps decoded (decode ms) | gaps > 100 ms | longest gap ms | click-to-photon p50 / p95 ms (samples) | first frame ms | lost / NACKs / resent | freezes (s) | keyframes asked | picture width | copies at the end |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const n = r.network || {};
  console.log(`| ${r.key} | ${r.fps.toFixed(1)} | ${r.decodedFps.toFixed(1)} (${r.decodeMs.toFixed(1)}) | ${r.gapsOver100} | ${r.maxGap.toFixed(0)} | ${r.c2p50.toFixed(1)} / ${r.c2p95.toFixed(1)} (${r.samples}) | ${r.firstFrame} | ${n.lost} / ${n.nacks} / ${n.resent} | ${n.freezes} (${(n.freezeSeconds || 0).toFixed(1)}) | ${n.keyframesAsked} | ${r.widths.join(' → ')} | ${r.copies ? 'on' : 'off'} |`);
}
console.log('\nThe encoder\'s target in each second of the scenario from its start (Mbit/s; – before the first frame):\n');
for (const r of rows) {
  const seconds = Array.from(r.targets, (t) => (t === undefined ? '–' : (t / 1e6).toFixed(1)));
  console.log(`- ${r.key}: ${seconds.join(' ')}`);
}
