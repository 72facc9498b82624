// The clipboard of a native game, both ways, in real headless Chromium against a running
// cloudplay (CLOUDPLAY_URL) with the native game `clipboard-game`: a jailed program that
// puts "from the game" on its X clipboard, and answers a clipboard holding "from the
// player…" with "game heard: …". The player copies from the game, pastes into it, and
// copies its answer back, all from the menu.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;

test('a player copies from a native game and pastes into it', { timeout: 90_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const context = await launch();
  try {
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${base}/play?game=clipboard-game&width=640&height=480`);
    await waitForStats(page, () => window.cloudplayStats.state === 'playing' && window.cloudplayStats.framesDecoded > 5, 40_000, 'the game playing');
    await page.click('#btn-start');
    await waitForStats(page, () => window.cloudplayStats.clipboard.available, 10_000, 'the clipboard offered');

    // The host takes one paste or copy per 250 ms from a player: the test keeps to that.
    const copy = async (want) => {
      await page.waitForTimeout(300);
      await page.evaluate(() => { window.cloudplayStats.clipboard.copied = null; });
      await page.click('#btn-menu');
      await page.click('#btn-copy');
      await waitForStats(page, (w) => window.cloudplayStats.clipboard.copied === w, 5_000, `the game's clipboard to read ${want}`, want);
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), want, 'and it is on this device\'s clipboard');
    };
    // The game put its text there as it started; give it a moment.
    for (let i = 0; i < 20 && (await page.evaluate(() => window.cloudplayStats.clipboard.copied)) !== 'from the game'; i++) {
      await page.click('#btn-menu');
      await page.click('#btn-copy');
      await page.waitForTimeout(600);
    }
    await copy('from the game');

    await page.evaluate(() => navigator.clipboard.writeText('from the player: héllo ✓'));
    await page.waitForTimeout(300);
    await page.click('#btn-menu');
    await page.click('#btn-paste');
    await waitForStats(page, () => window.cloudplayStats.clipboard.pasted === 1, 2_000, 'the paste');
    // The game reads its clipboard every 0.2 s and answers.
    await page.waitForTimeout(1_500);
    await copy('game heard: from the player: héllo ✓');

    // More than 64 KiB is not sent.
    await page.evaluate(() => navigator.clipboard.writeText('x'.repeat(70 * 1024)));
    await page.click('#btn-menu');
    await page.click('#btn-paste');
    await waitForStats(page, () => window.cloudplayStats.clipboard.error === 'too long', 2_000, 'the long paste refused');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
