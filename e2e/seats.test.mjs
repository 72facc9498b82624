// A spectator joins a game, against a running cloudplay (CLOUDPLAY_URL): Ann plays Neon
// Cycles and makes her session public; Bob, in another browser, watches it from the live
// list, asks to play, Ann lets him in from her page, and Bob plays on the connection he
// watched on: his key presses reach the game (the probe strip reports the sequence number
// of the last input the game applied, and only Bob sends any).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;

test('a viewer asks to play, the player lets them in, and they play without reconnecting', { timeout: 120_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const [annBrowser, bobBrowser] = [await launch(), await launch()];
  try {
    const ann = await annBrowser.newPage();
    await ann.goto(`${base}/play?game=neon-cycles&width=640&height=360&probe=1`);
    await waitForStats(ann, () => window.cloudplayStats.probeFrames > 10, 30_000, 'Ann playing');
    const session = await ann.evaluate(() => window.cloudplayStats.sessionId);
    const visibility = await ann.evaluate(async (id) => (await fetch(`/api/v1/sessions/${id}/visibility`, {
      method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ public: true }),
    })).status, session);
    assert.equal(visibility, 200);

    const bob = await bobBrowser.newPage();
    await bob.goto(`${base}/`);
    const live = await bob.evaluate(async () => (await fetch('/api/v1/live')).json());
    assert.equal(live.sessions[0]?.session_id, session, JSON.stringify(live));
    await bob.goto(`${base}/play?watch=${session}`);
    await waitForStats(bob, () => window.cloudplayStats.framesDecoded > 10, 20_000, 'Bob watching');
    await bob.keyboard.press('ArrowUp');
    await bob.waitForTimeout(300);
    assert.ok(!(await bob.evaluate(() => window.cloudplayStats.inputsSent)), 'a viewer sends no input');

    await bob.click('#btn-seat');
    await ann.waitForSelector('#seat-prompt:not([hidden])', { timeout: 5_000 });
    const framesBefore = await bob.evaluate(() => window.cloudplayStats.framesDecoded);
    await ann.click('#seat-yes');
    await waitForStats(bob, () => window.cloudplayStats.seat === 1, 5_000, 'Bob seated');
    for (let i = 0; i < 8; i++) {
      await bob.keyboard.press(i % 2 ? 'ArrowLeft' : 'ArrowUp');
      await bob.waitForTimeout(60);
    }
    await waitForStats(bob, () => (window.cloudplayStats.lastProbe?.inputSeq || 0) >= 12, 10_000, "Bob's input applied");
    const after = await bob.evaluate(() => ({ frames: window.cloudplayStats.framesDecoded, reconnects: window.cloudplayStats.reconnects }));
    assert.ok(after.frames > framesBefore, 'the same picture kept coming');
    assert.ok(!after.reconnects, 'on the same connection');
    console.log(`Bob plays in seat 2; the probe shows his input ${await bob.evaluate(() => window.cloudplayStats.lastProbe.inputSeq)}`);
  } finally {
    await annBrowser.close();
    await bobBrowser.close();
  }
});
