// Cross-play in real headless Chromium against a running cloudplay (CLOUDPLAY_URL) with
// two platforms that agreed to cross-play Neon Cycles: Ann signs in to acme's portal, Gus
// to globex's, each in their own browser; Ann opens a lobby, Gus joins with its code, Ann
// starts, and both play one session. Each player's input reaches the shared picture: the
// probe strip reports the sequence number of the last input the game applied (a key press
// is two: down and up), and only Ann's reach 24 while Gus's stay below 7. Before that,
// Ann manages her cloud saves on her portal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;

async function signIn(context, tenant, email) {
  const page = await context.newPage();
  await page.goto(`${base}/t/${tenant}?probe=1`); // the lobby's session stamps the probe strip
  await page.fill('#login [name=email]', email);
  await page.fill('#login [name=password]', 'password-1');
  await page.click('#login button');
  await page.waitForSelector('#signed-in:not(.hidden)');
  return page;
}

const lastInput = (page) => page.evaluate(() => window.cloudplayStats.lastProbe?.inputSeq);

test('players of two platforms play one session from their own portals', { timeout: 150_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const [annBrowser, gusBrowser] = [await launch(), await launch()];
  try {
    const ann = await signIn(annBrowser, 'acme', 'ann@acme.test');
    const gus = await signIn(gusBrowser, 'globex', 'gus@globex.test');

    // Her portal keeps her saves: upload one, see it, restore and delete through the page.
    await ann.fill('#upload-save [name=game]', 'acme-cycles');
    await ann.setInputFiles('#upload-save [name=file]', { name: 'cycles.srm', mimeType: 'application/octet-stream', buffer: Buffer.from('progress one') });
    await ann.click('#upload-save button');
    await ann.waitForFunction(() => document.getElementById('saves').textContent.includes('1 (current)'));
    await ann.setInputFiles('#upload-save [name=file]', { name: 'cycles.srm', mimeType: 'application/octet-stream', buffer: Buffer.from('progress two') });
    await ann.fill('#upload-save [name=game]', 'acme-cycles');
    await ann.click('#upload-save button');
    await ann.waitForFunction(() => document.getElementById('saves').textContent.includes('2 (current)'));
    await ann.click('button[data-restore="acme-cycles/sram/1"]');
    await ann.waitForFunction(() => document.getElementById('saves').textContent.includes('3 (current)'));
    const restored = await ann.evaluate(async () => (await fetch('/api/v1/saves/acme-cycles/sram')).text());
    assert.equal(restored, 'progress one');
    await ann.click('button[data-delete-save="acme-cycles/sram/3"]');
    await ann.waitForFunction(() => document.getElementById('saves').textContent.includes('No saves yet'));

    await ann.click('button[data-lobby="acme-cycles"]');
    await ann.waitForFunction(() => document.getElementById('lobby-code').textContent.length === 10);
    const code = await ann.textContent('#lobby-code');
    await gus.fill('#join-lobby [name=code]', code);
    await gus.click('#join-lobby button');
    await gus.waitForFunction(() => document.querySelectorAll('#lobby-members li').length === 2);
    const members = await gus.textContent('#lobby-members');
    assert.match(members, /Ann acme · seat 1/);
    assert.match(members, /Gus globex · seat 2 · you/);
    assert.doesNotMatch(members, /@/, 'no emails cross');
    await ann.waitForFunction(() => document.querySelectorAll('#lobby-members li').length === 2, null, { timeout: 10_000 });
    await ann.click('#lobby-start');
    await ann.waitForURL(/\/play\?lobby=/, { timeout: 20_000 });
    await gus.waitForURL(/\/play\?lobby=/, { timeout: 20_000 });
    for (const page of [ann, gus]) {
      await waitForStats(page, () => window.cloudplayStats.probeFrames > 10, 40_000, 'decoded frames with a probe');
    }
    const sessionOf = (page) => page.evaluate(() => window.cloudplayStats.sessionId);
    const session = await sessionOf(ann);
    assert.equal(await sessionOf(gus), session, 'one session for both');

    const sent = (page) => page.evaluate(() => window.cloudplayStats.inputsSent);
    // Gus's first press (his sequence numbers 1 and 2) shows in the shared picture.
    await gus.keyboard.press('Space');
    await waitForStats(gus, () => window.cloudplayStats.lastProbe.inputSeq === 2, 30_000, "Gus's input");
    // Ann's twelve presses: only she sends sequence numbers that high; Gus sees them too.
    for (let i = 0; i < 12; i++) {
      await ann.keyboard.press(i % 2 ? 'ArrowUp' : 'ArrowRight');
      await ann.waitForTimeout(60);
    }
    assert.equal(await sent(ann), 24);
    await waitForStats(ann, () => window.cloudplayStats.lastProbe.inputSeq === 24, 30_000, "Ann's inputs");
    await waitForStats(gus, () => window.cloudplayStats.lastProbe.inputSeq === 24, 10_000, "Ann's inputs on Gus's screen");
    // Gus again (3 to 6): the picture's last input goes back to his, on Ann's screen too.
    await gus.keyboard.press('ArrowLeft');
    await gus.keyboard.press('ArrowDown');
    assert.equal(await sent(gus), 6);
    await waitForStats(ann, () => window.cloudplayStats.lastProbe.inputSeq === 6, 10_000, "Gus's inputs on Ann's screen");
    console.log(`shared picture: last input ${await lastInput(ann)} on Ann's screen, ${await lastInput(gus)} on Gus's`);

    // Seats 1 and 2 of one session, as its owner's API reports it.
    const view = await ann.evaluate(async (id) => (await fetch(`/api/v1/sessions/${id}`)).json(), session);
    assert.equal(view.players, 2, JSON.stringify(view));
  } finally {
    await annBrowser.close();
    await gusBrowser.close();
  }
});
