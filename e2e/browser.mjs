// Launches Debian's Chromium headless the way this project's tests need it.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/// `device` sets the context's viewport, deviceScaleFactor, isMobile and hasTouch.
export async function launch(extraArgs = [], device = {}) {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  const userDataDir = mkdtempSync(join(tmpdir(), 'cloudplay-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 720 },
    ...device,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic', '--autoplay-policy=no-user-gesture-required',
      // Keep the renderer's timers honest in the background.
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      ...extraArgs,
    ],
  });
  // The profile is thrown away with the browser.
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return context;
}

/// Waits until `predicate(arg)` (run in the page) is true, or throws after `ms`.
export async function waitForStats(page, predicate, ms, what, arg = null) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const stats = await page.evaluate(() => window.cloudplayStats).catch(() => null);
    throw new Error(`timed out waiting for ${what}; stats: ${JSON.stringify(stats)}`);
  }
}

/// Mean luma of a rectangle of the current video frame.
export function lumaOf(page, rect) {
  return page.evaluate(([x, y, w, h]) => {
    const video = document.getElementById('video');
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    const context = canvas.getContext('2d');
    context.drawImage(video, 0, 0);
    const data = context.getImageData(x, y, w, h).data;
    let sum = 0;
    for (let i = 0; i < data.length; i += 4) sum += 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    return sum / (data.length / 4);
  }, rect);
}
