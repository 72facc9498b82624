// The microphone into a native game, in real headless Chromium against a running cloudplay
// (CLOUDPLAY_URL) whose platform `acme` has the native game `recorder`: a jailed program
// that records its default input into its home (which the host keeps, as an archive, for
// signed-in players). Chromium's fake capture device plays a WAV made here: espeak-ng's
// speech with pauses, mixed with white noise by sox.
//
// - Ann turns her microphone on and speaks, with the host's noise suppression on;
// - Bob plays at the same time without turning his on (his game must hear silence);
// - Cid then speaks the same words with noise suppression turned off;
// - Dan watches Ann's session: his connection sends no microphone at all.
// The recordings are checked by the Rust side (crates/cloudplay/tests/browser.rs): the
// words are there, the noise between them falls by 10 dB with suppression, the words keep
// their level. MIC_DIR is where the WAVs go.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { launch, waitForStats } from './browser.mjs';

const base = process.env.CLOUDPLAY_URL;
const dir = process.env.MIC_DIR;
const SPEAK_MS = 9_000;

/// speech.raw (the words alone) and mix.wav (words and noise, what the microphone hears):
/// 48 kHz mono, the words 0.8 s apart.
function makeSound() {
  const words = ['one', 'two', 'three', 'four', 'five', 'six'];
  const parts = [];
  for (const [i, word] of words.entries()) {
    const spoken = join(dir, `word-${i}.wav`);
    execFileSync('espeak-ng', ['-s', '150', '-w', spoken, word]);
    const padded = join(dir, `padded-${i}.wav`);
    execFileSync('sox', [spoken, '-r', '48000', '-c', '1', '-b', '16', padded, 'pad', '0', '0.8', 'norm', '-3']);
    parts.push(padded);
  }
  const speech = join(dir, 'speech.wav');
  execFileSync('sox', [...parts, speech]);
  execFileSync('sox', [speech, '-t', 'raw', '-e', 'signed', '-b', '16', join(dir, 'speech.raw')]);
  const noise = join(dir, 'noise.wav');
  const seconds = execFileSync('soxi', ['-D', speech]).toString().trim();
  execFileSync('sox', ['-n', '-r', '48000', '-c', '1', '-b', '16', noise, 'synth', seconds, 'whitenoise', 'vol', '0.05']);
  const mix = join(dir, 'mix.wav');
  execFileSync('sox', ['-m', speech, noise, mix]);
  return mix;
}

async function signIn(context, email) {
  const page = await context.newPage();
  page.on('pageerror', (e) => { throw e; });
  await page.goto(`${base}/t/acme`);
  await page.fill('#login [name=email]', email);
  await page.fill('#login [name=password]', 'password-1');
  await page.click('#login button');
  await page.waitForSelector('#signed-in:not(.hidden)');
  return page;
}

async function play(page) {
  await page.goto(`${base}/play?game=recorder&width=640&height=360`);
  await waitForStats(page, () => window.cloudplayStats.state === 'playing' && window.cloudplayStats.framesDecoded > 5, 40_000, 'the recorder playing');
  await page.click('#btn-start');
  await waitForStats(page, () => window.cloudplayStats.microphone.available, 10_000, 'the host to offer the microphone');
}

async function speak(page, suppression) {
  if (!suppression) {
    // Turned off before the microphone goes on: the whole recording is without it.
    await page.click('#btn-menu');
    await page.click('#btn-noise');
    await waitForStats(page, () => !window.cloudplayStats.microphone.suppression, 2_000, 'suppression off');
  }
  await page.click('#btn-menu');
  await page.click('#btn-mic');
  await waitForStats(page, () => window.cloudplayStats.microphone.on, 5_000, 'the microphone on');
  assert.ok(await page.isVisible('#mic-on'), 'the page shows that the microphone is on');
}

async function sentAudio(page) {
  return page.evaluate(async () => {
    const report = await window.cloudplayPeer.getStats();
    let packets = 0;
    report.forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'audio') packets += s.packetsSent; });
    return packets;
  });
}

const leave = (page) => page.evaluate(async () => {
  await fetch(`/api/v1/sessions/${window.cloudplayStats.sessionId}`, { method: 'DELETE' });
});

test('a native game hears its player, cleaned, and nobody else does', { timeout: 170_000 }, async () => {
  assert.ok(base && dir, 'CLOUDPLAY_URL and MIC_DIR are set');
  const mix = makeSound();
  const microphoneArgs = ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', `--use-file-for-fake-audio-capture=${mix}`];
  const browsers = [];
  try {
    const [annBrowser, bobBrowser, danBrowser] = [await launch(microphoneArgs), await launch(microphoneArgs), await launch(microphoneArgs)];
    browsers.push(annBrowser, bobBrowser, danBrowser);
    const [ann, bob] = [await signIn(annBrowser, 'ann@acme.test'), await signIn(bobBrowser, 'bob@acme.test')];
    await Promise.all([play(ann), play(bob)]);

    // Dan watches Ann's game from her share link.
    const share = await ann.evaluate(async () => {
      const response = await fetch(`/api/v1/sessions/${window.cloudplayStats.sessionId}/watch`, { method: 'POST' });
      return (await response.json()).watch_url;
    });
    const dan = await danBrowser.newPage();
    await dan.goto(new URL(share, base).href);
    await waitForStats(dan, () => window.cloudplayStats.framesDecoded > 5, 30_000, 'Dan watching');
    assert.ok(await dan.isHidden('#btn-mic'), 'a viewer is offered no microphone');

    await speak(ann, true);
    await ann.waitForTimeout(SPEAK_MS);
    assert.ok(await sentAudio(ann) > 100, 'Ann\'s page sends her microphone');
    assert.equal(await sentAudio(bob), 0, 'Bob\'s page sends nothing');
    assert.equal(await sentAudio(dan), 0, 'the viewer\'s connection carries no microphone');
    const heard = await ann.evaluate(() => window.cloudplayStats.microphone);
    assert.ok(heard.on && heard.suppression, JSON.stringify(heard));
    await Promise.all([leave(ann), leave(bob)]);
    await Promise.all(browsers.splice(0).map((b) => b.close()));

    const cidBrowser = await launch(microphoneArgs);
    browsers.push(cidBrowser);
    const cid = await signIn(cidBrowser, 'cid@acme.test');
    await play(cid);
    await speak(cid, false);
    await cid.waitForTimeout(SPEAK_MS);
    await leave(cid);
  } finally {
    await Promise.all(browsers.map((b) => b.close()));
  }
});
