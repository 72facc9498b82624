// Browser benchmark of a player's microphone: from capture in Chromium (its fake device's
// tone) to the host handing the samples to the game, decoding and noise suppression
// included, as the host times it (the browser's RTCP sender reports give each packet's
// capture time; on one machine the two clocks are one). The sound server's own hop to a
// game is `cloudplay bench --microphone`.
//
//   cargo build --release && npm --prefix e2e run microphone-bench
//
// Options (environment): SECONDS (default 20), CLOUDPLAY_BIN (default
// ../target/release/cloudplay), SUPPRESSION (default on; "off" to compare).
import { launch, waitForStats } from './browser.mjs';
import { serve } from './processes.mjs';

const seconds = Number(process.env.SECONDS || 20);
const suppression = process.env.SUPPRESSION !== 'off';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// `cloudplay_microphone_seconds` of the running session: { path: {0.5, 0.95, 0.99}, processing: … } in ms.
async function microphoneMetrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const parts = {};
  for (const [, part, quantile, value] of text.matchAll(/^cloudplay_microphone_seconds\{session="[^"]+",part="(\w+)",quantile="([\d.]+)"\} ([\d.e-]+)$/gm)) {
    (parts[part] ??= {})[quantile] = Number(value) * 1000;
  }
  const packets = text.match(/^cloudplay_session_microphone_packets_total\{[^}]*\} (\d+)$/m)?.[1];
  return { parts, packets: Number(packets || 0) };
}

const server = await serve();
const context = await launch(['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream']);
try {
  const page = await context.newPage();
  await page.goto(`${server.url}/play?game=neon-cycles&width=854&height=480`);
  await waitForStats(page, () => window.cloudplayStats.state === 'playing' && window.cloudplayStats.framesDecoded > 5, 30_000, 'the game playing');
  await page.click('#btn-start');
  await waitForStats(page, () => window.cloudplayStats.microphone.available, 10_000, 'the microphone offered');
  if (!suppression) {
    await page.click('#btn-menu');
    await page.click('#btn-noise');
  }
  await page.click('#btn-menu');
  await page.click('#btn-mic');
  await waitForStats(page, () => window.cloudplayStats.microphone.on, 5_000, 'the microphone on');
  await sleep(seconds * 1000);
  const { parts, packets } = await microphoneMetrics(server.url);
  const f = (v) => (v === undefined ? '–' : `${v.toFixed(1)} ms`);
  console.log(`Microphone, Chromium's capture → the game's input (${packets} packets of 20 ms, suppression ${suppression ? 'on' : 'off'}, last 600)\n`);
  console.log('| | p50 | p95 | p99 |');
  console.log('|---|---|---|---|');
  console.log(`| capture → handed to the game | ${f(parts.path?.['0.5'])} | ${f(parts.path?.['0.95'])} | ${f(parts.path?.['0.99'])} |`);
  console.log(`| of which the host's decoding${suppression ? ' and suppression' : ''} | ${f(parts.processing?.['0.5'])} | ${f(parts.processing?.['0.95'])} | ${f(parts.processing?.['0.99'])} |`);
  if (!parts.path) process.exitCode = 1;
} finally {
  await context.close();
  await server.stop();
}
