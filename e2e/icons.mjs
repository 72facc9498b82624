// Draws the app's PNG icons (web/icon-192.png, web/icon-512.png) from web/icon.svg in
// Chromium: `node icons.mjs` after changing the SVG.
import { readFileSync } from 'node:fs';
import { launch } from './browser.mjs';

const svg = readFileSync(new URL('../web/icon.svg', import.meta.url), 'utf8');
const context = await launch();
try {
  const page = await context.newPage();
  for (const size of [192, 512]) {
    await page.setViewportSize({ width: size, height: size });
    await page.setContent(`<style>html,body{margin:0}svg{display:block;width:${size}px;height:${size}px}</style>${svg}`);
    await page.screenshot({ path: new URL(`../web/icon-${size}.png`, import.meta.url).pathname });
  }
} finally {
  await context.close();
}
