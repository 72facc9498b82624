// Dropped connections in real headless Chromium, against cloudplay processes of the test's
// own (CLOUDPLAY_BIN): a 20 s outage of the path (`cloudplay netem --scenario outage-20`
// between the page and the media port) ends with the page back in the same session and
// seat without a reload; a host killed with SIGKILL is reported to the player within 3 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';
import { serve } from './processes.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const shown = () => !document.getElementById('overlay').classList.contains('hidden');

async function play(page, url) {
  await page.goto(`${url}/play?game=neon-cycles&width=320&height=240&probe=1`);
  await waitForStats(page, () => window.cloudplayStats.probeFrames > 10, 30_000, 'decoded frames');
  await page.keyboard.press('Space'); // join: the page is playing
  await waitForStats(page, () => window.cloudplayStats.lastProbe.inputSeq >= 1, 10_000, 'the key press applied');
}

test('a player rides out a 20 s outage back into the same session and seat', { timeout: 120_000 }, async () => {
  const relayStarted = Date.now(); // the relay's clock starts just after this
  const server = await serve('outage-20');
  const context = await launch();
  try {
    const page = await context.newPage();
    await play(page, server.url);
    const session = await page.evaluate(() => window.cloudplayStats.sessionId);
    assert.ok(Date.now() - relayStarted < 15_000, 'playing before the outage starts (at 15 s)');

    // The link goes down at 15 s: the player is told within 3 s of the last frame.
    await page.waitForFunction(() => !document.getElementById('overlay').classList.contains('hidden')
      && document.getElementById('overlay-title').textContent === 'Connection lost', null, { timeout: 30_000, polling: 50 });
    const silentFor = await page.evaluate(() => performance.now() - window.cloudplayStats.lastFrameAt);
    console.log(`told at ${(Date.now() - relayStarted) / 1000} s, ${silentFor} ms after the last frame`);
    assert.ok(silentFor <= 3_000, `told ${silentFor.toFixed(0)} ms after the last frame`);

    // Back at 35 s: the page reconnects by itself, to the same session.
    await waitForStats(page, () => window.cloudplayStats.reconnects >= 1, 60_000, 'a reconnection');
    const back = Date.now() - relayStarted;
    assert.ok(back >= 35_000, `back only once the link is (at 35 s): ${back} ms`);
    const decodedBefore = (await page.evaluate(() => window.cloudplayStats)).framesDecoded;
    await sleep(1_000);
    const decodedAfter = (await page.evaluate(() => window.cloudplayStats)).framesDecoded;
    assert.ok(decodedAfter - decodedBefore > 20, `frames keep coming: ${decodedAfter - decodedBefore} in 1 s`);
    assert.ok(!(await page.evaluate(shown)), 'the overlay is gone');
    const after = await page.evaluate(() => window.cloudplayStats);
    assert.equal(after.sessionId, session, 'the same session');
    assert.equal(after.state, 'playing');
    // The same seat: the player's keys still steer (the probe echoes them), and the
    // session has one player, not a second seat taken.
    const seq = after.lastProbe.inputSeq;
    await page.keyboard.press('ArrowUp');
    await waitForStats(page, (s) => window.cloudplayStats.lastProbe.inputSeq > s, 5_000, 'input after the outage');
    const info = await page.evaluate(async (id) => (await fetch(`/api/v1/sessions/${id}`)).json(), session);
    assert.equal(info.players, 1, `one player seat in use: ${JSON.stringify(info)}`);
    console.log(`back in session ${session} ${(back / 1000).toFixed(1)} s after the relay started (link back at 35 s); input seq ${seq} → ${after.lastProbe.inputSeq}+`);
  } finally {
    await context.close();
    await server.stop();
  }
});

test('a host killed with SIGKILL is reported to its player within 3 s', { timeout: 60_000 }, async () => {
  const server = await serve();
  const context = await launch();
  try {
    const page = await context.newPage();
    await play(page, server.url);
    server.server.kill('SIGKILL');
    await page.waitForFunction(() => !document.getElementById('overlay').classList.contains('hidden')
      && document.getElementById('overlay-title').textContent === 'Connection lost', null, { timeout: 10_000, polling: 50 });
    const silentFor = await page.evaluate(() => performance.now() - window.cloudplayStats.lastFrameAt);
    assert.ok(silentFor <= 3_000, `told ${silentFor.toFixed(0)} ms after the last frame`);
  } finally {
    await context.close();
    await server.stop();
  }
});
