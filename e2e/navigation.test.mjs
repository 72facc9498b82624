// A TV or a handheld: the home page and the player driven by a gamepad alone (a pad the
// test holds, in place of navigator.getGamepads), and the home page by the keyboard's
// arrows. D-pad moves the focus, A selects, Home opens the player's menu, B closes it;
// while the menu is open the game gets no input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const A = 0, B = 1, DOWN = 13, HOME = 16;

async function withPad(context) {
  await context.addInitScript(() => {
    const pad = {
      index: 0, id: 'test pad', connected: true, mapping: 'standard', timestamp: 0, axes: [0, 0, 0, 0],
      buttons: Array.from({ length: 17 }, () => ({ pressed: false, touched: false, value: 0 })),
    };
    window.testPad = pad;
    Object.defineProperty(navigator, 'getGamepads', { value: () => [pad, null, null, null] });
  });
}

async function tap(page, button) {
  const set = (down) => page.evaluate(([b, d]) => { window.testPad.buttons[b] = { pressed: d, touched: d, value: d ? 1 : 0 }; }, [button, down]);
  await set(true);
  await page.waitForTimeout(100);
  await set(false);
  await page.waitForTimeout(100);
}

const focused = (page) => page.evaluate(() => document.activeElement?.id || document.activeElement?.className || document.activeElement?.tagName);

/// Waits (up to 3 s: the page polls its pads once a frame) until `what` holds in the page.
async function until(page, predicate, arg, what) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: 3_000, polling: 50 });
  } catch {
    assert.fail(`${what} (focus on "${await focused(page)}")`);
  }
}
const focusIs = (id) => (want) => (document.activeElement?.id || document.activeElement?.className) === want;

test('a gamepad alone picks a game, starts it, and works the menu', { timeout: 60_000 }, async () => {
  const context = await launch();
  try {
    await withPad(context);
    const page = await context.newPage();
    await page.goto(`${base}/`);
    await page.waitForSelector('.game .play');
    // The app's worker installs (it fails to if any file of the shell is missing).
    const worker = await page.evaluate(() => Promise.race([
      navigator.serviceWorker.ready.then((r) => r.active?.scriptURL),
      new Promise((resolve) => setTimeout(() => resolve(null), 10_000)),
    ]));
    assert.match(worker || '', /\/sw\.js$/, 'the service worker is active');
    await tap(page, DOWN);
    await until(page, focusIs(), 'quality', 'the first D-pad press lands on the page (the quality select)');
    await tap(page, DOWN);
    await until(page, focusIs(), 'play', 'the D-pad reaches a Play button');
    await tap(page, A);
    await page.waitForURL(/\/play\?game=/, { timeout: 5_000 });

    await waitForStats(page, () => window.cloudplayStats.state === 'playing', 30_000, 'the game to play');
    await tap(page, DOWN);
    await until(page, focusIs(), 'btn-start', 'the overlay\'s button takes the focus');
    await tap(page, A);
    await until(page, () => document.getElementById('overlay').classList.contains('hidden'), null, 'A started play');

    await tap(page, HOME);
    await until(page, () => !document.getElementById('menu').hidden, null, 'Home opens the menu');
    await until(page, focusIs(), 'btn-stats', 'its first action has the focus');
    const before = await page.evaluate(() => window.cloudplayStats.inputsSent);
    await tap(page, DOWN);
    await until(page, focusIs(), 'btn-full', 'the D-pad moves down the menu');
    assert.equal(await page.evaluate(() => window.cloudplayStats.inputsSent), before, 'the game gets nothing meanwhile');
    await tap(page, B);
    await until(page, () => document.getElementById('menu').hidden, null, 'B closes the menu');
    await tap(page, A);
    await until(page, (n) => window.cloudplayStats.inputsSent > n, before, 'the pad plays again');
  } finally {
    await context.close();
  }
});

test('the keyboard\'s arrows and Enter pick a game', { timeout: 30_000 }, async () => {
  const context = await launch();
  try {
    const page = await context.newPage();
    await page.goto(`${base}/`);
    await page.waitForSelector('.game .play');
    await page.keyboard.press('ArrowDown');
    await until(page, focusIs(), 'quality', 'the first arrow lands on the page');
    await page.keyboard.press('ArrowDown');
    await until(page, focusIs(), 'play', 'the arrows reach a Play button');
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/play\?game=/, { timeout: 5_000 });
  } finally {
    await context.close();
  }
});
