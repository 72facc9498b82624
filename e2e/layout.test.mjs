// The player page on every kind of screen, in real headless Chromium against a running
// cloudplay (CLOUDPLAY_URL): phone (portrait and landscape, touch), tablet, desktop and TVs.
// At each size, playing and with the menu open: no two visible controls overlap, none
// leaves the screen, the picture has the largest area it can, no probe strip is stamped,
// the stream is sized for the screen, and the page logs no error. With SCREENSHOTS set (a
// directory), a picture of each is kept there (docs/screenshots).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const shots = process.env.SCREENSHOTS;

const phone = { deviceScaleFactor: 3, isMobile: true, hasTouch: true };
const SCREENS = [
  { name: 'phone-portrait', viewport: { width: 390, height: 844 }, ...phone, touch: true, stream: [854, 1280] },
  { name: 'phone-landscape', viewport: { width: 844, height: 390 }, ...phone, touch: true, stream: [1280, 1920] },
  { name: 'small-phone-portrait', viewport: { width: 320, height: 640 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, touch: true, stream: [854, 854] },
  { name: 'tablet', viewport: { width: 820, height: 1180 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, touch: true, stream: [1280, 1920] },
  { name: 'desktop', viewport: { width: 1280, height: 720 }, touch: false, stream: [1280, 1280] },
  { name: 'tv-1080p', viewport: { width: 1920, height: 1080 }, touch: false, stream: [1920, 1920] },
  { name: 'tv-4k', viewport: { width: 3840, height: 2160 }, touch: false, stream: [1920, 1920] },
];

/// Every control a player can see now, with its box.
function visibleControls(page) {
  return page.evaluate(() => {
    const shown = (el) => {
      if (el.closest('[hidden], .hidden')) return false;
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden' || style.display === 'none' || Number(style.opacity) === 0) return false;
      const box = el.getBoundingClientRect();
      return box.width > 0 && box.height > 0;
    };
    return [...document.querySelectorAll('button, a, select, input, .pad')].filter(shown).map((el) => {
      const box = el.getBoundingClientRect();
      return { id: el.id || el.textContent.trim(), left: box.left, top: box.top, right: box.right, bottom: box.bottom };
    });
  });
}

function checkLayout(controls, viewport, where) {
  const { width, height } = viewport;
  for (const c of controls) {
    assert.ok(c.left >= 0 && c.top >= 0 && c.right <= width + 0.5 && c.bottom <= height + 0.5,
      `${where}: "${c.id}" leaves the ${width}×${height} screen (${JSON.stringify(c)})`);
  }
  for (let i = 0; i < controls.length; i++) {
    for (let j = i + 1; j < controls.length; j++) {
      const [a, b] = [controls[i], controls[j]];
      const overlap = Math.max(0, Math.min(a.right, b.right) - Math.max(a.left, b.left))
        * Math.max(0, Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top));
      assert.ok(overlap < 1, `${where}: "${a.id}" and "${b.id}" overlap (${JSON.stringify(a)} ${JSON.stringify(b)})`);
    }
  }
}

/// The picture's letterboxed box inside the <video> element.
function pictureBox(page) {
  return page.evaluate(() => {
    const video = document.getElementById('video');
    const box = video.getBoundingClientRect();
    const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
    const [w, h] = [video.videoWidth * scale, video.videoHeight * scale];
    const left = box.left + (box.width - w) / 2, top = box.top + (box.height - h) / 2;
    return { left, top, right: left + w, bottom: top + h, width: w, height: h };
  });
}

for (const screen of SCREENS) {
  test(`the player fits a ${screen.name} screen (${screen.viewport.width}×${screen.viewport.height})`, { timeout: 60_000 }, async () => {
    assert.ok(base, 'CLOUDPLAY_URL is set');
    const { name, touch, stream, ...device } = screen;
    const context = await launch([], device);
    try {
      const page = await context.newPage();
      const errors = [];
      page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
      page.on('pageerror', (e) => errors.push(String(e)));
      page.on('response', (r) => { if (r.status() >= 400) errors.push(`${r.status()} ${r.url()}`); });
      await page.goto(`${base}/play?game=neon-cycles&new=1`);
      await waitForStats(page, () => window.cloudplayStats.state === 'playing' && window.cloudplayStats.framesDecoded > 20, 30_000, 'the game to play');
      await page.click('#btn-start');
      await page.waitForTimeout(300);

      const playing = await visibleControls(page);
      checkLayout(playing, screen.viewport, `${name}, playing`);
      const ids = playing.map((c) => c.id);
      assert.ok(ids.includes('btn-menu'), `${name}: the menu button is shown`);
      assert.equal(ids.includes('A'), touch, `${name}: the on-screen pad is ${touch ? '' : 'not '}shown`);
      for (const secondary of ['btn-stats', 'btn-share', 'btn-moment', 'btn-full', 'btn-open']) {
        assert.ok(!ids.includes(secondary), `${name}: "${secondary}" waits behind the menu`);
      }
      if (shots) await page.screenshot({ path: join(shots, `player-${name}.jpg`), type: 'jpeg', quality: 70 });

      // The picture: as large as the area it has (two edges touch it), and in portrait
      // on a touch screen above the pad, never under it.
      const picture = await pictureBox(page);
      const { width, height } = screen.viewport;
      const fills = Math.abs(picture.width - width) < 2 || Math.abs(picture.height - height) < 2;
      const portraitTouch = touch && height > width;
      if (portraitTouch) {
        const pads = playing.filter((c) => c.id.length <= 6 && !c.id.startsWith('btn'));
        for (const pad of pads) assert.ok(pad.top >= picture.bottom - 1, `${name}: "${pad.id}" lies on the picture`);
        assert.ok(Math.abs(picture.width - width) < 2, `${name}: the picture is as wide as the screen (${picture.width})`);
      } else {
        assert.ok(fills, `${name}: the picture fills the screen one way (${JSON.stringify(picture)})`);
      }

      // No test pattern, and a stream sized for the screen.
      const stats = await page.evaluate(() => window.cloudplayStats);
      assert.equal(stats.probeFrames, 0, `${name}: no probe strip is stamped for a player`);
      // What the page asked for (the host may lower it while the link or the machine is
      // short of room: the mitigation row says so).
      const [streamWidth] = stats.requested;
      assert.ok(streamWidth >= stream[0] && streamWidth <= stream[1], `${name}: a stream ${streamWidth} wide, wanted ${stream.join('–')}`);

      // The menu: its actions, nothing overlapping; "Lock mouse" only with a mouse.
      await page.click('#btn-menu');
      await page.waitForTimeout(100);
      const open = await visibleControls(page);
      checkLayout(open, screen.viewport, `${name}, menu open`);
      const menuIds = open.map((c) => c.id);
      for (const action of ['btn-stats', 'btn-share', 'btn-moment', 'btn-full', 'btn-open', 'btn-leave']) {
        assert.ok(menuIds.includes(action), `${name}: the menu offers "${action}"`);
      }
      assert.equal(menuIds.includes('btn-lock'), !touch, `${name}: "Lock mouse" is ${touch ? 'not ' : ''}offered`);
      for (const touchOnly of ['btn-trackpad', 'btn-keyboard']) {
        assert.equal(menuIds.includes(touchOnly), touch, `${name}: "${touchOnly}" is ${touch ? '' : 'not '}offered`);
      }
      if (shots) await page.screenshot({ path: join(shots, `player-${name}-menu.jpg`), type: 'jpeg', quality: 70 });
      await page.click('#btn-stats');
      await page.waitForTimeout(1200);
      const statsShown = await page.evaluate(() => !document.getElementById('stats').classList.contains('hidden'));
      assert.ok(statsShown, `${name}: Stats opens the overlay`);
      checkLayout(await visibleControls(page), screen.viewport, `${name}, stats shown`);
      const row = await page.evaluate(() => ({ rtt: document.getElementById('s-rtt').textContent, res: document.getElementById('s-res').textContent, c2p: document.getElementById('s-c2p').parentElement.hidden }));
      assert.match(row.res, /^\d+×\d+$/, `${name}: the overlay shows the resolution`);
      assert.ok(row.c2p, `${name}: no click-to-photon row without the probe`);
      assert.deepEqual(errors, [], `${name}: the page logs no error`);
      console.log(`${name}: asked for ${stats.requested.join('×')}, got ${stats.widestFrame} wide, picture ${picture.width.toFixed(0)}×${picture.height.toFixed(0)}, ${playing.length} controls while playing, rtt ${row.rtt}`);
    } finally {
      await context.close();
    }
  });
}
