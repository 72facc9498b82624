// Browser benchmark: click-to-photon through the latency probe and time to first frame,
// in real headless Chromium against `cloudplay serve` (started here from
// CLOUDPLAY_BIN, default ../target/release/cloudplay, unless CLOUDPLAY_URL is given).
//
//   cargo build --release && npm --prefix e2e run bench
//
// Options (environment): PRESSES (default 200), LOADS (page loads for first frame,
// default 5), WIDTH/HEIGHT (default 1280x720), SCREENSHOT (path of a PNG to save).
//
// Two measures: click-to-photon through the probe strip (until a frame shows the tick that
// applied the input), and for catalogue games the reaction (until the picture's centre
// changes colour), which also counts the game's own input lag: what run-ahead removes.
import { spawn } from 'node:child_process';
import { launch, waitForStats } from './browser.mjs';

const presses = Number(process.env.PRESSES || 200);
const loads = Number(process.env.LOADS || 5);
const [width, height] = [Number(process.env.WIDTH || 1280), Number(process.env.HEIGHT || 720)];
// Another catalogue game (say colour-pad, with CLOUDPLAY_CATALOGUE and CLOUDPLAY_CONTENT_DIR
// set for the server) is driven with the X key (RetroPad A) instead.
const game = process.env.GAME || 'neon-cycles';

async function startServer() {
  if (process.env.CLOUDPLAY_URL) return { url: process.env.CLOUDPLAY_URL, stop() {} };
  const bin = process.env.CLOUDPLAY_BIN || new URL('../target/release/cloudplay', import.meta.url).pathname;
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CLOUDPLAY_LOG: 'warn' } });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start within 20 s')), 20_000);
    child.stdout.on('data', (chunk) => {
      const match = /open (http:\/\/[^/\s]+)\//.exec(chunk.toString());
      if (match) { clearTimeout(timer); resolve(match[1]); }
    });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { url, stop: () => child.kill('SIGINT') };
}

const pct = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * q))];
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Times each key edge (down or up) to the expected display time of the first frame whose
// centre colour differs from the colour shown at the edge.
async function watchReaction(page) {
  await page.evaluate(() => {
    const video = document.getElementById('video');
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 1;
    const context = canvas.getContext('2d', { willReadFrequently: true });
    const r = (window.benchReaction = { samples: [], pending: null, colour: null });
    const edge = (e) => { if (!e.repeat && r.colour) r.pending = { at: performance.now(), from: r.colour }; };
    addEventListener('keydown', edge, true);
    addEventListener('keyup', edge, true);
    const onFrame = (now, metadata) => {
      context.drawImage(video, video.videoWidth >> 1, video.videoHeight >> 1, 1, 1, 0, 0, 1, 1);
      const colour = Array.from(context.getImageData(0, 0, 1, 1).data.slice(0, 3));
      if (r.pending) {
        const change = colour.reduce((sum, c, i) => sum + Math.abs(c - r.pending.from[i]), 0);
        if (change > 60) {
          r.samples.push(Math.max(0, (metadata.expectedDisplayTime || now) - r.pending.at));
          r.pending = null;
        }
      }
      r.colour = colour;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
  await sleep(200);
}

const server = await startServer();
const context = await launch();
try {
  const page = await context.newPage();
  const playUrl = `${server.url}/play?game=${encodeURIComponent(game)}&width=${width}&height=${height}&probe=1&stats=1`;

  // Time to first frame: from navigating to the player page (the Play click) to the first
  // decoded frame, over several fresh loads.
  const firstFrame = [];
  for (let i = 0; i < loads; i++) {
    const started = Date.now();
    await page.goto(playUrl);
    await waitForStats(page, () => window.cloudplayStats.framesDecoded > 0, 20_000, 'first frame');
    firstFrame.push(Date.now() - started);
  }

  // Click-to-photon: key presses at irregular intervals; each is timed from the keydown
  // handler to the expected display time of the first frame whose probe echoes it.
  await waitForStats(page, () => window.cloudplayStats.probeFrames > 30, 10_000, 'probed frames');
  const builtin = game === 'neon-cycles';
  if (builtin) {
    await page.keyboard.press('Space'); // join
    await sleep(3_500); // countdown
  }
  const keys = builtin ? ['ArrowUp', 'ArrowRight', 'ArrowDown', 'ArrowLeft'] : ['x'];
  if (!builtin) await watchReaction(page);
  for (let i = 0; i < presses; i++) {
    await page.keyboard.down(keys[i % keys.length]);
    // A catalogue game's picture follows the held key: hold it, so both edges show.
    if (!builtin) await sleep(80 + ((i * 53) % 80));
    await page.keyboard.up(keys[i % keys.length]);
    await sleep(80 + ((i * 37) % 80));
  }
  await sleep(500);
  const stats = await page.evaluate(() => window.cloudplayStats);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
  const c2p = stats.clickToPhoton;
  const reaction = builtin ? [] : await page.evaluate(() => window.benchReaction.samples);
  console.log(`\nBrowser (headless Chromium, software decode), ${game}, ${width}x${height} at 60 fps, loopback:\n`);
  console.log('| measure | samples | p50 ms | p95 ms | max ms |');
  console.log('|---|---|---|---|---|');
  console.log(`| click-to-photon | ${c2p.length} | ${pct(c2p, 0.5).toFixed(1)} | ${pct(c2p, 0.95).toFixed(1)} | ${Math.max(...c2p).toFixed(1)} |`);
  if (reaction.length) console.log(`| reaction (picture changes) | ${reaction.length} | ${pct(reaction, 0.5).toFixed(1)} | ${pct(reaction, 0.95).toFixed(1)} | ${Math.max(...reaction).toFixed(1)} |`);
  console.log(`| first frame after Play | ${firstFrame.length} | ${pct(firstFrame, 0.5)} | ${pct(firstFrame, 0.95)} | ${Math.max(...firstFrame)} |`);
} finally {
  await context.close();
  server.stop();
}
