// Going live from the browser, against a running cloudplay (CLOUDPLAY_URL) where Cleo
// (cleo@local.test) is a creator: she signs in to the portal, makes a channel, opens
// "Go live" and publishes Chromium's fake camera and microphone by WHIP — a publisher no
// one on the project wrote. A guest in another browser finds the channel on the API's
// live list and watches it on the player page: frames decode, at the camera's size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const fakeMedia = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

test('a creator goes live from the Go live page and a guest watches', { timeout: 120_000 }, async () => {
  assert.ok(base, 'CLOUDPLAY_URL is set');
  const [creatorBrowser, guestBrowser] = [await launch(fakeMedia), await launch()];
  try {
    const portal = await creatorBrowser.newPage();
    await portal.goto(`${base}/t/local`);
    await portal.fill('#login [name=email]', 'cleo@local.test');
    await portal.fill('#login [name=password]', 'password-1');
    await portal.click('#login button');
    await portal.waitForSelector('#channels-card:not(.hidden)');
    await portal.fill('#new-channel [name=title]', 'Cleo live');
    await portal.click('#new-channel button');
    await portal.waitForFunction(() => document.getElementById('channel-key').textContent.includes('cps_'));
    const goLive = portal.locator('#channels a', { hasText: 'Go live' }).first();
    const channel = new URL(await goLive.getAttribute('href'), base).searchParams.get('channel');
    // The link's page, in the same tab (which keeps the key the portal just showed).
    await portal.goto(new URL(await goLive.getAttribute('href'), base).href);
    assert.match(await portal.inputValue('#key'), /^cps_/, 'the key the portal just showed is filled in');
    await portal.click('#start');
    await portal.waitForFunction(() => window.cloudplayLive.state === 'live' && window.cloudplayLive.framesSent > 30, null, { timeout: 20_000, polling: 100 })
      .catch(async (e) => { throw new Error(`not live: ${JSON.stringify(await portal.evaluate(() => window.cloudplayLive))} ${e.message}`); });
    const codec = await portal.evaluate(() => window.cloudplayLive.codec);
    assert.equal(codec, 'video/H264', 'the page publishes H.264');

    const guest = await guestBrowser.newPage();
    await guest.goto(`${base}/`);
    const live = await guest.evaluate(async () => (await fetch('/api/v1/live')).json());
    assert.equal(live.channels[0]?.channel_id, channel, JSON.stringify(live));
    const clicked = Date.now();
    await guest.goto(`${base}/play?channel=${channel}`);
    await waitForStats(guest, () => window.cloudplayStats.framesDecoded > 0, 15_000, 'the first frame');
    const firstFrame = Date.now() - clicked;
    await waitForStats(guest, () => window.cloudplayStats.framesDecoded > 60, 20_000, 'frames flowing');
    const size = await guest.evaluate(() => [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]);
    assert.ok(size[0] >= 320 && size[1] >= 180, `the camera's picture: ${size}`);
    console.log(`watching: first frame ${firstFrame} ms after opening the page, picture ${size.join('x')}`);

    // Stop: the broadcast ends and leaves the live list.
    await portal.click('#stop');
    await guest.waitForFunction(async () => (await (await fetch('/api/v1/live')).json()).channels.length === 0, null, { timeout: 10_000, polling: 250 });
  } finally {
    await creatorBrowser.close();
    await guestBrowser.close();
  }
});
