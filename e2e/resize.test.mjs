// The stream follows the window: a player's page goes from 1280×720 to 854×480 and back
// mid-session; the decoded picture follows within a second each way on the same
// connection, the probe strip still reads, and the pointer still lands where it points.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;

async function decodedWidth(page) {
  return page.evaluate(async () => {
    const pc = window.cloudplayPeer;
    let width = 0;
    (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') width = r.frameWidth || 0; });
    return width;
  });
}

/// Milliseconds until the decoded picture is `width` wide, give or take the few pixels of
/// keeping the game's aspect ratio (854×480 holds a 852×480 picture of a 16:9 game).
async function follows(page, width) {
  const started = Date.now();
  while (Date.now() - started < 3_000) {
    if (Math.abs((await decodedWidth(page)) - width) <= 4) return Date.now() - started;
    await page.waitForTimeout(50);
  }
  assert.fail(`the picture never became ${width} wide (it is ${await decodedWidth(page)})`);
}

/// Moves the mouse to a point of the picture (fractions of its box) and returns what the
/// page sent, normalised to 0–1.
async function point(page, fx, fy) {
  const box = await page.evaluate(() => {
    const video = document.getElementById('video');
    const r = video.getBoundingClientRect();
    const scale = Math.min(r.width / video.videoWidth, r.height / video.videoHeight);
    const [w, h] = [video.videoWidth * scale, video.videoHeight * scale];
    return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, w, h };
  });
  await page.mouse.move(box.left + fx * box.w, box.top + fy * box.h);
  await page.waitForTimeout(50);
  const [x, y] = await page.evaluate(() => window.cloudplayStats.lastPointer);
  return [x / 65535, y / 65535];
}

test('the stream follows the window to 854×480 and back without reconnecting', { timeout: 60_000 }, async () => {
  const context = await launch();
  try {
    const page = await context.newPage();
    await page.goto(`${base}/play?game=neon-cycles&width=1280&height=720&probe=1&new=1`);
    await waitForStats(page, () => window.cloudplayStats.probeFrames > 10 && window.cloudplayPeer, 30_000, 'frames with a probe');
    await page.click('#btn-start');
    assert.equal(await decodedWidth(page), 1280);
    const timings = [];
    for (const [w, h] of [[854, 480], [1280, 720]]) {
      await page.setViewportSize({ width: w, height: h });
      const probesBefore = await page.evaluate(() => window.cloudplayStats.probeFrames);
      // The page waits 400 ms for the window to settle, then the host's next frame is the
      // new size: within a second of the resize.
      const ms = await follows(page, w);
      timings.push(ms);
      assert.ok(ms < 1_000, `${w} wide after ${ms} ms`);
      await waitForStats(page, (n) => window.cloudplayStats.probeFrames > n + 10, 5_000, `the probe to read at ${w}`);
      const [x, y] = await point(page, 0.75, 0.25);
      assert.ok(Math.abs(x - 0.75) < 0.01 && Math.abs(y - 0.25) < 0.01, `the pointer lands at (0.75, 0.25): (${x}, ${y})`);
      assert.ok((await page.evaluate(() => window.cloudplayStats.probeFrames)) > probesBefore);
    }
    const stats = await page.evaluate(() => window.cloudplayStats);
    assert.equal(stats.reconnects, 0, 'the same connection throughout');
    console.log(`the picture followed the window in ${timings.join(' and ')} ms (from the resize)`);
  } finally {
    await context.close();
  }
});
