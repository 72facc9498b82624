// A phone driving a program that wants a mouse: touch as a trackpad (one finger moves the
// pointer, a tap clicks, two fingers scroll, a two-finger tap right-clicks), switched to
// direct touch from the menu, and the screen's keyboard typing into the game. Touches are
// real touch events (Chromium's Input.dispatchTouchEvent); what the page sends is counted
// in window.cloudplayStats.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const DPR = 3;

test('touch works as a trackpad, as direct touch, and types with the screen\'s keyboard', { timeout: 60_000 }, async () => {
  const context = await launch([], { viewport: { width: 844, height: 390 }, deviceScaleFactor: DPR, isMobile: true, hasTouch: true });
  try {
    const page = await context.newPage();
    await page.goto(`${base}/play?game=neon-cycles&touch=trackpad&new=1`);
    await waitForStats(page, () => window.cloudplayStats.state === 'playing', 30_000, 'the game to play');
    await page.tap('#btn-start');
    const cdp = await context.newCDPSession(page);
    const touch = (type, points) => cdp.send('Input.dispatchTouchEvent', { type, touchPoints: points.map(([x, y], id) => ({ x, y, id })) });
    const drag = async (from, [dx, dy], steps = 6) => {
      await touch('touchStart', from);
      for (let i = 1; i <= steps; i++) await touch('touchMove', from.map(([x, y]) => [x + (dx * i) / steps, y + (dy * i) / steps]));
      await touch('touchEnd', []);
    };
    const sent = () => page.evaluate(() => ({ ...window.cloudplayStats.trackpad, inputs: window.cloudplayStats.inputsSent, mode: window.cloudplayStats.touchMode }));
    const centre = [422, 150];
    assert.equal((await sent()).mode, 'trackpad');

    await drag([centre], [120, 0]);
    let now = await sent();
    // 120 px less the 10 px before a touch counts as a move, × 1.6 × the pixel ratio.
    assert.ok(now.moved[0] > 100 * 1.6 * DPR && now.moved[0] <= 120 * 1.6 * DPR + 1 && now.moved[1] === 0, `the pointer moved right: ${now.moved}`);
    assert.equal(now.clicks, 0, 'a drag is not a click');

    await touch('touchStart', [centre]);
    await touch('touchEnd', []);
    await page.waitForTimeout(50);
    assert.equal((await sent()).clicks, 1, 'a tap clicks');

    await drag([[380, 250], [460, 250]], [0, -100], 5);
    now = await sent();
    assert.deepEqual(now.wheel, [0, 4], 'two fingers dragged up scroll four notches down');
    await touch('touchStart', [[380, 150], [460, 150]]);
    await touch('touchEnd', []);
    await page.waitForTimeout(50);
    assert.equal((await sent()).rightClicks, 1, 'a two-finger tap right-clicks');

    // Direct touch, from the menu (and remembered for the game).
    await page.tap('#btn-menu');
    await page.tap('#btn-trackpad');
    now = await sent();
    assert.equal(now.mode, 'direct');
    await touch('touchStart', [centre]);
    await touch('touchEnd', []);
    await page.waitForTimeout(50);
    const after = await sent();
    assert.equal(after.clicks, now.clicks, 'no trackpad click');
    assert.equal(after.inputs, now.inputs + 2, 'a touch down and up went as touches');
    assert.equal(await page.evaluate(() => localStorage.getItem('cloudplay.touch.neon-cycles')), 'direct');

    // The screen's keyboard: "Hi" is Shift, H, H up, Shift up, I, I up.
    await page.tap('#btn-menu');
    await page.tap('#btn-keyboard');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'soft-keyboard');
    const before = (await sent()).inputs;
    await page.keyboard.insertText('H');
    await page.keyboard.insertText('i');
    await page.waitForTimeout(50);
    assert.equal((await sent()).inputs, before + 6, 'typed text became key presses');
  } finally {
    await context.close();
  }
});
