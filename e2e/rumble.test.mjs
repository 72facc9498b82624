// Rumble: a homebrew libretro core (crates/cloudplay/tests/data/rumble_core.c) runs its
// motors while RetroPad A is held. The player's pad (one the test holds, in place of
// navigator.getGamepads, with a vibration actuator that notes what it is asked) presses
// A; the page plays the game's rumble on it, and stops it when A is let go.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const EAST = 1; // RetroPad A (RetroArch's layout: the east face button)

test('the game\'s rumble reaches the pad of its seat', { timeout: 60_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const context = await launch();
  try {
    await context.addInitScript(() => {
      const effects = (window.testEffects = []);
      const pad = {
        index: 0, id: 'test pad', connected: true, mapping: 'standard', timestamp: 0, axes: [0, 0, 0, 0],
        buttons: Array.from({ length: 17 }, () => ({ pressed: false, touched: false, value: 0 })),
        vibrationActuator: {
          type: 'dual-rumble',
          playEffect: async (type, params) => { effects.push({ type, ...params }); return 'complete'; },
          reset: async () => { effects.push({ type: 'reset' }); return 'complete'; },
        },
      };
      window.testPad = pad;
      Object.defineProperty(navigator, 'getGamepads', { value: () => [pad, null, null, null] });
    });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${base}/play?game=rumble-pad&width=640&height=480`);
    await waitForStats(page, () => window.cloudplayStats.state === 'playing' && window.cloudplayStats.framesDecoded > 5, 30_000, 'the game playing');
    await page.click('#btn-start');
    const press = (down) => page.evaluate(([b, d]) => { window.testPad.buttons[b] = { pressed: d, touched: d, value: d ? 1 : 0 }; }, [EAST, down]);

    await press(true);
    await waitForStats(page, () => window.cloudplayStats.rumble.strong === 65535, 5_000, 'the rumble message');
    const on = await page.evaluate(() => window.testEffects.filter((e) => e.type === 'dual-rumble'));
    assert.ok(on.length > 0, 'the pad was asked to rumble');
    assert.equal(on[0].strongMagnitude, 1);
    assert.ok(Math.abs(on[0].weakMagnitude - 0x8000 / 65535) < 1e-6, JSON.stringify(on[0]));
    // Held on: the effect is renewed before it runs out.
    await page.waitForTimeout(1_500);
    const renewed = await page.evaluate(() => window.testEffects.filter((e) => e.type === 'dual-rumble').length);
    assert.ok(renewed >= 2, `renewed while held (${renewed})`);

    await press(false);
    await waitForStats(page, () => window.cloudplayStats.rumble.strong === 0 && window.cloudplayStats.rumble.weak === 0, 5_000, 'the rumble stopping');
    const last = await page.evaluate(() => window.testEffects.at(-1));
    assert.equal(last.type, 'reset', 'the pad is stopped');
    await page.waitForTimeout(1_200);
    const after = await page.evaluate(() => window.testEffects.at(-1));
    assert.equal(after.type, 'reset', 'and stays stopped');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
