// The player page in real headless Chromium against a running cloudplay (CLOUDPLAY_URL):
// the stream plays and decodes, the probe's frame counter advances, a key press joins the
// game (the probe echoes the input and the picture changes), and audio arrives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats, lumaOf } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const [W, H] = [640, 360];
// The join banner's text-free left part (NeonCycles::join_banner_rect).
const banner = [Math.floor(W / 6) + 4, Math.floor((H * 5) / 8) + 4, Math.floor(Math.floor((W * 2) / 3) / 12), Math.floor(Math.floor(H / 6) / 4)];

test('a player plays Neon Cycles in Chromium', { timeout: 90_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const context = await launch();
  try {
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    await page.goto(`${base}/play?game=neon-cycles&width=${W}&height=${H}&probe=1`);

    await waitForStats(page, () => window.cloudplayStats.probeFrames > 10, 30_000, 'decoded frames with a probe');
    const first = await page.evaluate(() => window.cloudplayStats.lastProbe.frameSeq);
    await waitForStats(page, (n) => window.cloudplayStats.lastProbe.frameSeq > 0, 5_000, 'probe');
    await page.waitForTimeout(500);
    const later = await page.evaluate(() => window.cloudplayStats.lastProbe);
    assert.ok(later.frameSeq > first + 10, `frame counter advances (${first} → ${later.frameSeq})`);
    assert.equal(later.inputSeq, 0, 'no input yet');
    const before = await lumaOf(page, banner);
    assert.ok(before > 45 && before < 75, `the join banner is on screen (luma ${before.toFixed(1)})`);

    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });

    await page.keyboard.down('Space');
    await page.keyboard.up('Space');
    await waitForStats(page, () => window.cloudplayStats.lastProbe.inputSeq >= 1, 5_000, 'the probe to echo the key press');
    await page.waitForTimeout(200);
    const after = await lumaOf(page, banner);
    assert.ok(after < 42, `the picture changed: the banner is gone (luma ${after.toFixed(1)})`);

    await page.keyboard.down('ArrowUp');
    await page.keyboard.up('ArrowUp');
    await waitForStats(page, () => window.cloudplayStats.clickToPhoton.length >= 1, 5_000, 'a click-to-photon sample');
    await waitForStats(page, () => window.cloudplayStats.audioPackets > 20, 10_000, 'audio packets');
    const stats = await page.evaluate(() => window.cloudplayStats);
    console.log(`first frame ${stats.firstFrameMs} ms, click-to-photon ${stats.clickToPhoton.map((v) => v.toFixed(1)).join(', ')} ms, audio packets ${stats.audioPackets}`);
    assert.equal(stats.state, 'playing');
  } finally {
    await context.close();
  }
});

const runtimes = process.env.CLOUDPLAY_RUNTIMES === '1';

test('an emulated NES game answers the keyboard in Chromium', { timeout: 60_000, skip: !runtimes && 'no libretro core' }, async () => {
  const context = await launch();
  try {
    const page = await context.newPage();
    await page.goto(`${base}/play?game=colour-pad&width=${W}&height=${H}&probe=1`);
    await waitForStats(page, () => window.cloudplayStats.probeFrames > 10, 30_000, 'decoded frames of the emulator');
    const centre = [W / 2 - 20, H / 2 - 20, 40, 40];
    const idle = await lumaOf(page, centre);
    await page.keyboard.down('x'); // RetroPad A
    await waitForStats(page, () => window.cloudplayStats.lastProbe.inputSeq >= 1, 5_000, 'the key press to be applied');
    await page.waitForTimeout(200);
    const held = await lumaOf(page, centre);
    await page.keyboard.up('x');
    assert.ok(Math.abs(held - idle) > 20, `holding A changes the colour (luma ${idle.toFixed(1)} → ${held.toFixed(1)})`);
  } finally {
    await context.close();
  }
});

test('a game that quits tells the player why', { timeout: 60_000, skip: !runtimes && 'no Xvfb' }, async () => {
  const context = await launch();
  try {
    const page = await context.newPage();
    await page.goto(`${base}/play?game=quitter&width=${W}&height=${H}&probe=0`);
    await waitForStats(page, () => window.cloudplayStats.framesDecoded > 5, 30_000, 'frames of the native game');
    await waitForStats(page, () => window.cloudplayStats.state === 'failed', 20_000, 'the game to end');
    const stats = await page.evaluate(() => window.cloudplayStats);
    assert.match(stats.error, /xterm exited/, 'the reason reaches the page');
    assert.equal(await page.textContent('#overlay-title'), 'The game ended');
  } finally {
    await context.close();
  }
});
