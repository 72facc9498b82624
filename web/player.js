// cloudplay player: WHEP to receive the stream, the input protocol v1 over the "input"
// data channel, the latency probe strip read from decoded frames, and a stats overlay.
// Protocol details: docs/protocol.md.
import { measureRegions } from '/web/regions.js';
import { navigation, registerServiceWorker } from '/web/app.js';

const params = new URLSearchParams(location.search);
const video = document.getElementById('video');
const overlay = document.getElementById('overlay');
const overlayTitle = document.getElementById('overlay-title');
const overlayText = document.getElementById('overlay-text');
const startButton = document.getElementById('btn-start');

// Exposed for tests and curious players (open the console).
const stats = (window.cloudplayStats = {
  state: 'connecting',
  sessionId: null,
  framesDecoded: 0,
  probeFrames: 0,
  lastProbe: null,
  inputsSent: 0,
  clickToPhoton: [],
  firstFrameMs: null,
  audioPackets: 0,
  // Times the page got back into its session after the connection dropped.
  reconnects: 0,
  // What the path did to the video (from getStats): packets lost, NACKs sent, packets
  // resent, freezes and their total seconds, frames dropped, keyframes asked for.
  network: null,
  // The widest picture seen and the current one: narrower means the host lowered it.
  widestFrame: 0,
  frameSize: null,
  // The host sends each media packet twice (the link loses too much).
  copies: false,
  // The picture size this page asked for (sized for its screen unless the link said), and
  // the area it last told the host it shows the picture in (device pixels).
  requested: null,
  viewSize: null,
  // The last pointer position sent, normalised to the picture (0–65535).
  lastPointer: null,
  error: null,
});

function fail(message, title = 'Could not play') {
  stats.state = 'failed';
  stats.error = message;
  overlay.classList.remove('hidden');
  overlayTitle.textContent = title;
  overlayText.textContent = message;
  startButton.hidden = true;
}

// ---------------------------------------------------------------- input protocol v1
const KIND = { key: 1, mouseMove: 2, mousePosition: 3, mouseButton: 4, wheel: 5, gamepad: 6, touch: 7 };
let channel = null;
let fastChannel = null;
const recentInputs = []; // the latest messages, repeated on the fast channel
let nextSeq = 1;
const pendingClicks = []; // [seq, sentAt] awaiting their frame

// Whether this page plays (a viewer the players let in plays from then on).
let seated = false;

function send(kind, writePayload, payloadLength) {
  if (!seated || !channel || channel.readyState !== 'open') return;
  const buffer = new ArrayBuffer(6 + payloadLength);
  const view = new DataView(buffer);
  const seq = nextSeq++;
  view.setUint8(0, 1);
  view.setUint8(1, kind);
  view.setUint32(2, seq, true);
  writePayload(view, 6);
  channel.send(buffer);
  // The same again on the unreliable channel, after the messages before it: a lost
  // datagram costs nothing there, and nothing waits for a retransmission.
  if (fastChannel && fastChannel.readyState === 'open') {
    recentInputs.push(new Uint8Array(buffer));
    if (recentInputs.length > 4) recentInputs.shift();
    const bundle = new Uint8Array(recentInputs.reduce((n, m) => n + m.length, 0));
    recentInputs.reduce((at, m) => (bundle.set(m, at), at + m.length), 0);
    fastChannel.send(bundle);
  }
  stats.inputsSent++;
  return seq;
}

// KeyboardEvent.code → USB HID usage (page 0x07): physical keys, whatever the layout.
const HID = (() => {
  const map = {};
  for (let i = 0; i < 26; i++) map['Key' + String.fromCharCode(65 + i)] = 0x04 + i;
  for (let i = 1; i <= 9; i++) map['Digit' + i] = 0x1d + i;
  map.Digit0 = 0x27;
  for (let i = 1; i <= 12; i++) map['F' + i] = 0x39 + i;
  Object.assign(map, {
    Enter: 0x28, Escape: 0x29, Backspace: 0x2a, Tab: 0x2b, Space: 0x2c, Minus: 0x2d, Equal: 0x2e,
    BracketLeft: 0x2f, BracketRight: 0x30, Backslash: 0x31, Semicolon: 0x33, Quote: 0x34, Backquote: 0x35,
    Comma: 0x36, Period: 0x37, Slash: 0x38, CapsLock: 0x39, Insert: 0x49, Home: 0x4a, PageUp: 0x4b,
    Delete: 0x4c, End: 0x4d, PageDown: 0x4e, ArrowRight: 0x4f, ArrowLeft: 0x50, ArrowDown: 0x51, ArrowUp: 0x52,
    ControlLeft: 0xe0, ShiftLeft: 0xe1, AltLeft: 0xe2, MetaLeft: 0xe3,
    ControlRight: 0xe4, ShiftRight: 0xe5, AltRight: 0xe6, MetaRight: 0xe7,
  });
  return map;
})();

function sendKey(event, down) {
  if (menuOpen()) return; // the keys move around the menu
  if (event.target === softKeyboard) return; // typed text: see the soft keyboard below
  const usage = HID[event.code];
  if (usage === undefined) return;
  if (event.code !== 'F11' && event.code !== 'F12') event.preventDefault();
  const seq = send(KIND.key, (v, o) => {
    v.setUint16(o, usage, true);
    v.setUint8(o + 2, (down ? 1 : 0) | (event.repeat ? 2 : 0));
  }, 3);
  if (down && !event.repeat && seq) pendingClicks.push([seq, performance.now()]);
}
addEventListener('keydown', (e) => sendKey(e, true));
addEventListener('keyup', (e) => sendKey(e, false));

const clamp16 = (n) => Math.max(-32768, Math.min(32767, Math.round(n)));

// Pointer position normalised to the picture inside the <video> (letterboxing excluded).
function normalised(clientX, clientY) {
  const rect = video.getBoundingClientRect();
  const vw = video.videoWidth || 16, vh = video.videoHeight || 9;
  const scale = Math.min(rect.width / vw, rect.height / vh);
  const left = rect.left + (rect.width - vw * scale) / 2, top = rect.top + (rect.height - vh * scale) / 2;
  const x = Math.max(0, Math.min(1, (clientX - left) / (vw * scale)));
  const y = Math.max(0, Math.min(1, (clientY - top) / (vh * scale)));
  return [Math.round(x * 65535), Math.round(y * 65535)];
}

video.addEventListener('mousemove', (e) => {
  if (document.pointerLockElement === video) {
    send(KIND.mouseMove, (v, o) => { v.setInt16(o, clamp16(e.movementX), true); v.setInt16(o + 2, clamp16(e.movementY), true); }, 4);
  } else {
    const [x, y] = normalised(e.clientX, e.clientY);
    stats.lastPointer = [x, y];
    send(KIND.mousePosition, (v, o) => { v.setUint16(o, x, true); v.setUint16(o + 2, y, true); }, 4);
  }
});
for (const [type, down] of [['mousedown', true], ['mouseup', false]]) {
  video.addEventListener(type, (e) => {
    const seq = send(KIND.mouseButton, (v, o) => { v.setUint8(o, e.button); v.setUint8(o + 1, down ? 1 : 0); }, 2);
    if (down && seq) pendingClicks.push([seq, performance.now()]);
  });
}
video.addEventListener('contextmenu', (e) => e.preventDefault());
video.addEventListener('wheel', (e) => {
  e.preventDefault();
  const lines = e.deltaMode === 0 ? 1 / 40 : 1;
  send(KIND.wheel, (v, o) => { v.setInt16(o, clamp16(e.deltaX * lines), true); v.setInt16(o + 2, clamp16(e.deltaY * lines), true); }, 4);
}, { passive: false });

const TOUCH_PHASE = { touchstart: 0, touchmove: 1, touchend: 2, touchcancel: 3 };
for (const type of Object.keys(TOUCH_PHASE)) {
  video.addEventListener(type, (e) => {
    e.preventDefault();
    if (trackpad.on) return trackpad[type](e);
    for (const t of e.changedTouches) {
      const [x, y] = normalised(t.clientX, t.clientY);
      send(KIND.touch, (v, o) => {
        v.setUint8(o, t.identifier & 0xff); v.setUint8(o + 1, TOUCH_PHASE[type]);
        v.setUint16(o + 2, x, true); v.setUint16(o + 4, y, true);
      }, 6);
    }
  }, { passive: false });
}

// Touch as a trackpad (for programs that want a mouse): one finger moves the pointer, a tap
// clicks, a two-finger tap right-clicks, two fingers dragged scroll, and a finger held still
// for half a second holds the button down until it lifts (to drag).
const TAP_MS = 220, TAP_SLOP_PX = 10, HOLD_MS = 500, SPEED = 1.6, WHEEL_PX = 24;
const mouseButton = (button, down) => send(KIND.mouseButton, (v, o) => { v.setUint8(o, button); v.setUint8(o + 1, down ? 1 : 0); }, 2);
const trackpad = {
  on: false,
  touches: new Map(), // identifier → { x, y, startX, startY }
  startedAt: 0,
  fingers: 0, // the most fingers down at once in this gesture
  moved: false,
  holding: false,
  holdTimer: null,
  scrolled: [0, 0],
  sent: (stats.trackpad = { moved: [0, 0], clicks: 0, rightClicks: 0, wheel: [0, 0], drags: 0 }),
  touchstart(e) {
    if (this.touches.size === 0) {
      this.startedAt = performance.now();
      this.fingers = 0;
      this.moved = false;
      this.scrolled = [0, 0];
    }
    for (const t of e.changedTouches) this.touches.set(t.identifier, { x: t.clientX, y: t.clientY, startX: t.clientX, startY: t.clientY });
    this.fingers = Math.max(this.fingers, this.touches.size);
    clearTimeout(this.holdTimer);
    if (this.touches.size === 1) {
      this.holdTimer = setTimeout(() => {
        if (this.moved || this.touches.size !== 1) return;
        this.holding = true;
        this.sent.drags++;
        mouseButton(0, true);
      }, HOLD_MS);
    }
  },
  touchmove(e) {
    let dx = 0, dy = 0;
    for (const t of e.changedTouches) {
      const known = this.touches.get(t.identifier);
      if (!known) continue;
      dx += t.clientX - known.x; dy += t.clientY - known.y;
      if (Math.hypot(t.clientX - known.startX, t.clientY - known.startY) > TAP_SLOP_PX) this.moved = true;
      known.x = t.clientX; known.y = t.clientY;
    }
    if (this.touches.size >= 2) {
      // Two fingers: the mean of their movement scrolls, a notch every WHEEL_PX.
      this.scrolled[0] += dx / this.touches.size; this.scrolled[1] += dy / this.touches.size;
      const [nx, ny] = this.scrolled.map((d) => Math.trunc(d / WHEEL_PX));
      if (nx || ny) {
        this.scrolled[0] -= nx * WHEEL_PX; this.scrolled[1] -= ny * WHEEL_PX;
        // Content follows the fingers, as on a phone: dragging up scrolls down.
        send(KIND.wheel, (v, o) => { v.setInt16(o, clamp16(-nx), true); v.setInt16(o + 2, clamp16(-ny), true); }, 4);
        this.sent.wheel[0] -= nx; this.sent.wheel[1] -= ny;
      }
    } else if (this.moved && (dx || dy)) {
      const scale = SPEED * (window.devicePixelRatio || 1);
      const [mx, my] = [Math.round(dx * scale), Math.round(dy * scale)];
      send(KIND.mouseMove, (v, o) => { v.setInt16(o, clamp16(mx), true); v.setInt16(o + 2, clamp16(my), true); }, 4);
      this.sent.moved[0] += mx; this.sent.moved[1] += my;
    }
  },
  touchend(e) {
    for (const t of e.changedTouches) this.touches.delete(t.identifier);
    if (this.touches.size > 0) return;
    clearTimeout(this.holdTimer);
    if (this.holding) {
      this.holding = false;
      mouseButton(0, false);
    } else if (!this.moved && performance.now() - this.startedAt < TAP_MS * (this.fingers > 1 ? 1.5 : 1)) {
      const button = this.fingers > 1 ? 2 : 0;
      const seq = mouseButton(button, true);
      mouseButton(button, false);
      if (seq) pendingClicks.push([seq, performance.now()]);
      if (button === 2) this.sent.rightClicks++; else this.sent.clicks++;
    }
  },
  touchcancel(e) { this.touchend(e); },
};

// Gamepads: a full snapshot whenever one changes (standard mapping).
function sendGamepad(pad, buttons, lt, rt, axes, connected = true) {
  const n = Math.min(axes.length, 8);
  send(KIND.gamepad, (v, o) => {
    v.setUint8(o, pad); v.setUint8(o + 1, connected ? 1 : 0);
    v.setUint32(o + 2, buttons >>> 0, true);
    v.setUint8(o + 6, lt); v.setUint8(o + 7, rt); v.setUint8(o + 8, n);
    for (let i = 0; i < n; i++) v.setInt16(o + 9 + i * 2, clamp16(axes[i] * 32767), true);
  }, 9 + n * 2);
}
const lastPads = new Map();
// The pad's Home button, or Start and Select together (pads without one), opens and closes
// the menu.
const HOME = 1 << 16, START_SELECT = (1 << 8) | (1 << 9);
let chordHeld = false;
function pollGamepads() {
  for (const gp of navigator.getGamepads ? navigator.getGamepads() : []) {
    if (!gp || gp.index > 3) continue;
    let buttons = 0;
    gp.buttons.forEach((b, i) => { if (b.pressed && i < 32) buttons |= 1 << i; });
    const chord = (buttons & HOME) !== 0 || (buttons & START_SELECT) === START_SELECT;
    if (chord && !chordHeld && stats.state === 'playing') (menuOpen() ? closeMenu() : openMenu());
    chordHeld = chord;
    if (menuOpen()) { lastPads.delete(gp.index); continue; } // the pad drives the menu now
    const lt = Math.round((gp.buttons[6]?.value || 0) * 255), rt = Math.round((gp.buttons[7]?.value || 0) * 255);
    const axes = Array.from(gp.axes, (a) => (Math.abs(a) < 0.12 ? 0 : a));
    const key = `${buttons}|${lt}|${rt}|${axes.map((a) => a.toFixed(2)).join(',')}`;
    if (lastPads.get(gp.index) !== key) {
      const before = lastPads.get(gp.index)?.split('|')[0] ?? '0';
      lastPads.set(gp.index, key);
      sendGamepad(gp.index, buttons, lt, rt, axes);
      if (buttons & ~Number(before)) pendingClicks.push([nextSeq - 1, performance.now()]);
    }
  }
  requestAnimationFrame(pollGamepads);
}
requestAnimationFrame(pollGamepads);

// On-screen pad for touch devices: a virtual standard gamepad, pad 0.
const touchpad = document.getElementById('touchpad');
const touchScreen = matchMedia('(pointer: coarse)').matches || params.get('touchpad') === '1';
/// The on-screen pad is shown to a player on a touch screen (a viewer has nothing to press).
function showTouchpad() { document.body.classList.toggle('touch', touchScreen && seated); }
{
  let held = 0;
  for (const el of touchpad.querySelectorAll('.pad')) {
    const bit = 1 << Number(el.dataset.button);
    const set = (down) => (e) => {
      e.preventDefault();
      held = down ? held | bit : held & ~bit;
      el.classList.toggle('active', down);
      sendGamepad(0, held, 0, 0, [0, 0, 0, 0]);
      if (down) pendingClicks.push([nextSeq - 1, performance.now()]);
    };
    el.addEventListener('pointerdown', set(true));
    el.addEventListener('pointerup', set(false));
    el.addEventListener('pointercancel', set(false));
    el.addEventListener('pointerleave', set(false));
  }
}

// ---------------------------------------------------------------- latency probe strip
const COLUMNS = 40, ROWS = 3, PAYLOAD_BITS = 108;
const probeCanvas = document.createElement('canvas');
const probeContext = probeCanvas.getContext('2d', { willReadFrequently: true });

function crc8(bytes) {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
  }
  return crc;
}

function readProbe() {
  const width = video.videoWidth;
  if (!width) return null;
  const cell = Math.max(8, Math.floor(width / 80));
  const w = COLUMNS * cell, h = ROWS * cell;
  if (probeCanvas.width !== w) { probeCanvas.width = w; probeCanvas.height = h; }
  probeContext.drawImage(video, 0, 0, w, h, 0, 0, w, h);
  const pixels = probeContext.getImageData(0, 0, w, h).data;
  const bits = [];
  for (let i = 0; i < PAYLOAD_BITS; i++) {
    const x = (i % COLUMNS) * cell + (cell >> 1), y = Math.floor(i / COLUMNS) * cell + (cell >> 1);
    bits.push(pixels[(y * w + x) * 4 + 1] >= 128 ? 1 : 0);
  }
  if (bits[0] !== 1 || bits[1] !== 0 || bits[2] !== 1 || bits[3] !== 1) return null;
  const bytes = [];
  for (let b = 0; b < 13; b++) {
    let value = 0;
    for (let i = 0; i < 8; i++) value = (value << 1) | bits[4 + b * 8 + i];
    bytes.push(value);
  }
  if (crc8(bytes.slice(0, 12)) !== bytes[12]) return null;
  const word = (at) => ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
  return { frameSeq: word(0), inputSeq: word(4), captureMs: word(8) };
}

const graph = document.getElementById('graph').getContext('2d');
function drawGraph() {
  const samples = stats.clickToPhoton.slice(-115);
  graph.clearRect(0, 0, 230, 48);
  graph.strokeStyle = '#2a2d55';
  graph.strokeRect(0, 0, 230, 48);
  graph.fillStyle = '#00e6ff';
  samples.forEach((ms, i) => {
    const h = Math.min(46, (ms / 100) * 46);
    graph.fillRect(i * 2, 47 - h, 1.5, h);
  });
}

function percentile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * q))];
}

let playStarted = performance.now();
function onVideoFrame(now, metadata) {
  stats.framesDecoded++;
  lastFrameAt = stats.lastFrameAt = performance.now();
  if (stats.firstFrameMs === null) {
    stats.firstFrameMs = Math.round(performance.now() - playStarted);
    document.getElementById('s-first').textContent = `${stats.firstFrameMs} ms`;
  }
  const probe = readProbe();
  if (probe) {
    stats.probeFrames++;
    stats.lastProbe = probe;
    const shown = metadata.expectedDisplayTime || now;
    while (pendingClicks.length && pendingClicks[0][0] <= probe.inputSeq) {
      const [, sentAt] = pendingClicks.shift();
      stats.clickToPhoton.push(Math.max(0, shown - sentAt));
      if (stats.clickToPhoton.length > 1000) stats.clickToPhoton.shift();
      drawGraph();
    }
  }
  video.requestVideoFrameCallback(onVideoFrame);
}

// ---------------------------------------------------------------- stats overlay
const statsPanel = document.getElementById('stats');
if (params.get('stats') !== '1') statsPanel.classList.add('hidden');
document.getElementById('btn-stats').addEventListener('click', () => { statsPanel.classList.toggle('hidden'); closeMenu(); });
// Click-to-photon needs the probe strip, which only tests and benchmarks ask for.
const probing = params.get('probe') === '1';
document.getElementById('s-c2p').parentElement.hidden = !probing;
let previous = null;
async function updateStats(pc) {
  const report = await pc.getStats();
  let inbound = null, audio = null, pair = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') audio = s;
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
  });
  const set = (id, text) => (document.getElementById(id).textContent = text);
  if (audio) stats.audioPackets = audio.packetsReceived;
  if (inbound) {
    // The host halves the picture (and then its frame rate) when the link cannot carry it.
    stats.widestFrame = Math.max(stats.widestFrame, inbound.frameWidth || 0);
    stats.frameSize = [inbound.frameWidth || 0, inbound.frameHeight || 0];
    const lowered = inbound.frameWidth && inbound.frameWidth < stats.widestFrame;
    set('s-res', `${inbound.frameWidth || 0}×${inbound.frameHeight || 0}`);
    set('s-mitigation', lowered ? `lowered for the link (from ${stats.widestFrame} wide)` : 'none');
    set('s-fps', `${Math.round(inbound.framesPerSecond || 0)}`);
    if (previous) {
      const seconds = (inbound.timestamp - previous.timestamp) / 1000;
      set('s-bitrate', `${(((inbound.bytesReceived - previous.bytesReceived) * 8) / seconds / 1e6).toFixed(2)} Mbit/s`);
    }
    const lost = inbound.packetsLost || 0;
    set('s-loss', `${((lost / Math.max(1, lost + inbound.packetsReceived)) * 100).toFixed(2)} %`);
    if (inbound.framesDecoded) set('s-decode', `${((inbound.totalDecodeTime / inbound.framesDecoded) * 1000).toFixed(1)} ms`);
    if (inbound.jitterBufferEmittedCount) set('s-jitter', `${((inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000).toFixed(1)} ms`);
    const network = (stats.network = {
      lost,
      nacks: inbound.nackCount || 0,
      resent: inbound.retransmittedPacketsReceived || 0,
      freezes: inbound.freezeCount || 0,
      freezeSeconds: inbound.totalFreezesDuration || 0,
      framesDropped: inbound.framesDropped || 0,
      keyframesAsked: (inbound.pliCount || 0) + (inbound.firCount || 0),
      // Frames the decoder put out and what they cost, against the frames the page shows
      // (a bench tells a slow path from a busy machine with these).
      framesDecoded: inbound.framesDecoded || 0,
      decodeSeconds: inbound.totalDecodeTime || 0,
      at: inbound.timestamp,
    });
    set('s-nack', `${network.nacks} / ${network.resent}`);
    set('s-freeze', `${network.freezes} (${network.freezeSeconds.toFixed(1)} s)`);
    set('s-dropped', `${network.framesDropped} / ${network.keyframesAsked}`);
    previous = inbound;
  }
  if (pair && pair.currentRoundTripTime !== undefined) set('s-rtt', `${(pair.currentRoundTripTime * 1000).toFixed(1)} ms`);
  const c2p = stats.clickToPhoton;
  if (c2p.length) set('s-c2p', `p50 ${percentile(c2p, 0.5).toFixed(0)} / p95 ${percentile(c2p, 0.95).toFixed(0)} ms`);
}

// ---------------------------------------------------------------- menu
// The secondary actions live behind one button; while the menu is open the keyboard and
// the pads move around it (web/app.js) instead of playing.
const menu = document.getElementById('menu');
const menuButton = document.getElementById('btn-menu');
const menuOpen = () => !menu.hidden;
function openMenu() {
  menu.hidden = false;
  document.body.classList.add('menu-open');
  menuButton.setAttribute('aria-expanded', 'true');
  menu.querySelector('button:not([hidden]), a')?.focus();
}
function closeMenu() {
  if (menu.hidden) return;
  menu.hidden = true;
  document.body.classList.remove('menu-open');
  menuButton.setAttribute('aria-expanded', 'false');
  video.focus();
}
menuButton.addEventListener('click', () => (menuOpen() ? closeMenu() : openMenu()));
addEventListener('pointerdown', (e) => { if (menuOpen() && !menu.contains(e.target) && e.target !== menuButton) closeMenu(); });
// Gamepad or arrows: in the menu while it is open, and on the overlay's button before play.
navigation({
  active: () => menuOpen() || (!overlay.classList.contains('hidden') && !startButton.hidden),
  root: () => (menuOpen() ? menu : overlay),
  back: () => { if (!menuOpen()) return false; closeMenu(); return true; },
  menu: () => {}, // Home, or Start and Select: the pad poll above opens and closes it
});

document.getElementById('btn-full').addEventListener('click', () => {
  closeMenu();
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen({ navigationUI: 'hide' }).catch(() => {});
});
// Locking the mouse is for a mouse (or a trackpad): not offered on a touch screen.
const lockButton = document.getElementById('btn-lock');
lockButton.hidden = !matchMedia('(pointer: fine)').matches;
lockButton.addEventListener('click', () => { closeMenu(); video.requestPointerLock?.(); });
// On a touch screen: touch as a trackpad or as direct touches (remembered per game; a
// program driven by a mouse starts as a trackpad), and the screen's keyboard.
const trackpadButton = document.getElementById('btn-trackpad');
const keyboardButton = document.getElementById('btn-keyboard');
const softKeyboard = document.getElementById('soft-keyboard');
trackpadButton.hidden = keyboardButton.hidden = !touchScreen;
const touchKey = `cloudplay.touch.${params.get('game') || ''}`;
function setTrackpad(on) {
  trackpad.on = on;
  stats.touchMode = on ? 'trackpad' : 'direct';
  trackpadButton.textContent = on ? 'Touch: trackpad' : 'Touch: direct';
}
async function chooseTouchMode() {
  const saved = params.get('touch') || localStorage.getItem(touchKey);
  if (saved) return setTrackpad(saved === 'trackpad');
  const game = params.get('game');
  const info = game ? await api(`/api/v1/games/${encodeURIComponent(game)}`, undefined, 'GET').catch(() => null) : null;
  setTrackpad(!!info?.pointer);
}
setTrackpad(false);
trackpadButton.addEventListener('click', () => {
  setTrackpad(!trackpad.on);
  localStorage.setItem(touchKey, stats.touchMode);
  closeMenu();
});
keyboardButton.addEventListener('click', () => { closeMenu(); softKeyboard.focus(); });
// Characters typed on the screen's keyboard become key presses (US layout, as HID says).
const TYPED = (() => {
  const map = { ' ': ['Space', false], '\n': ['Enter', false] };
  for (let i = 0; i < 26; i++) {
    const letter = String.fromCharCode(97 + i);
    map[letter] = ['Key' + letter.toUpperCase(), false];
    map[letter.toUpperCase()] = ['Key' + letter.toUpperCase(), true];
  }
  for (let i = 0; i <= 9; i++) map[String(i)] = ['Digit' + i, false];
  Object.assign(map, { '-': ['Minus', false], '=': ['Equal', false], ',': ['Comma', false], '.': ['Period', false], '/': ['Slash', false], ';': ['Semicolon', false], "'": ['Quote', false],
    '!': ['Digit1', true], '?': ['Slash', true], ':': ['Semicolon', true], '"': ['Quote', true], '_': ['Minus', true], '+': ['Equal', true] });
  return map;
})();
function typeKey(code, shift) {
  const press = (c, down) => sendKey({ code: c, repeat: false, preventDefault() {} }, down);
  if (shift) press('ShiftLeft', true);
  press(code, true);
  press(code, false);
  if (shift) press('ShiftLeft', false);
}
softKeyboard.addEventListener('input', (e) => {
  if (e.inputType === 'deleteContentBackward') typeKey('Backspace', false);
  else if (e.inputType === 'insertLineBreak') typeKey('Enter', false);
  else for (const ch of e.data || '') if (TYPED[ch]) typeKey(...TYPED[ch]);
  softKeyboard.value = '';
});
softKeyboard.addEventListener('keydown', (e) => {
  // Keys the screen's keyboard sends as keys (Enter, Backspace on some) rather than text.
  if (e.key === 'Enter' || e.key === 'Backspace') { e.preventDefault(); typeKey(e.key, false); }
  e.stopPropagation();
});

document.getElementById('btn-moment').addEventListener('click', async () => {
  closeMenu();
  // The game's whole state now: a friend who opens the link plays from exactly here.
  let url;
  try {
    url = (await api(`/api/v1/sessions/${encodeURIComponent(stats.sessionId)}/moments`)).play_url;
  } catch (e) {
    alert(`Could not capture this moment: ${e.message}`);
    return;
  }
  try { await navigator.clipboard.writeText(url); } catch { /* clipboard needs a secure context */ }
  alert(`Anyone on this platform with this link plays from this moment (for 7 days):\n${url}`);
});
document.getElementById('btn-share').addEventListener('click', async () => {
  closeMenu();
  // A watch grant: the link lets people watch, never play; a new link revokes the old one.
  let url;
  try {
    url = (await api(`/api/v1/sessions/${encodeURIComponent(stats.sessionId)}/watch`)).watch_url;
  } catch (e) {
    alert(`Could not make a share link: ${e.message}`);
    return;
  }
  try { await navigator.clipboard.writeText(url); } catch { /* clipboard needs a secure context */ }
  overlayText.textContent = '';
  alert(`Anyone with this link can watch (not play):\n${url}`);
});

// ---------------------------------------------------------------- seats for viewers
// A viewer asks the players for a seat; a player lets them in (or opens the free seats to
// anyone who asks), and the viewer plays on the same connection (docs/protocol.md).
const seatButton = document.getElementById('btn-seat');
const openButton = document.getElementById('btn-open');
const seatPrompt = document.getElementById('seat-prompt');
let seatRequest = null;
const request = (message) => channel?.readyState === 'open' && channel.send(JSON.stringify(message));

function onSeatMessage(message) {
  switch (message.type) {
    case 'seat_request':
      seatRequest = message.request;
      seatPrompt.hidden = false;
      return true;
    case 'seated':
      seated = true;
      showTouchpad();
      showMicrophone();
      showClipboard();
      sendViewSize();
      stats.seat = message.slot;
      seatButton.hidden = true;
      openButton.hidden = false;
      overlay.classList.remove('hidden');
      overlayTitle.textContent = 'You play now';
      overlayText.textContent = `Seat ${message.slot + 1}: keyboard, gamepad or touch.`;
      setTimeout(() => overlay.classList.add('hidden'), 1500);
      return true;
    case 'seat_refused':
      seatButton.disabled = false;
      seatButton.textContent = 'Ask to play';
      overlayText.textContent = message.reason;
      return true;
    case 'copies':
      // The host sends each media packet twice while this link loses too much.
      stats.copies = message.on;
      document.getElementById('s-copies').textContent = message.on
        ? `on (link lost ${(message.loss_permille / 10).toFixed(1)} %)`
        : 'off';
      return true;
    default:
      return false;
  }
}

seatButton.addEventListener('click', () => {
  request({ type: 'ask_seat' });
  seatButton.disabled = true;
  seatButton.textContent = 'Asked…';
  // The players may say nothing: ask again later.
  setTimeout(() => { if (!seated) { seatButton.disabled = false; seatButton.textContent = 'Ask to play'; } }, 6_000);
});
document.getElementById('seat-yes').addEventListener('click', () => {
  if (seatRequest) request({ type: 'grant_seat', request: seatRequest });
  seatPrompt.hidden = true;
});
document.getElementById('seat-no').addEventListener('click', () => { seatPrompt.hidden = true; });
let seatsOpen = false;
openButton.addEventListener('click', () => {
  closeMenu();
  seatsOpen = !seatsOpen;
  request({ type: 'open_seats', open: seatsOpen });
  openButton.textContent = seatsOpen ? 'Close seats' : 'Open seats';
});

// ---------------------------------------------------------------- clipboard
// For native programs: the menu pastes this device's clipboard into the game's and copies
// the game's into this device's, each on the player's click (the browser may ask first),
// text only, at most 64 KiB.
const pasteButton = document.getElementById('btn-paste');
const copyButton = document.getElementById('btn-copy');
const MAX_CLIPBOARD = 64 * 1024;
let clipboardAvailable = false;
stats.clipboard = { available: false, pasted: 0, copied: null, error: null };

function showClipboard() {
  pasteButton.hidden = copyButton.hidden = !(clipboardAvailable && seated);
  stats.clipboard.available = clipboardAvailable && seated;
}

function notice(text) {
  overlay.classList.remove('hidden');
  overlayTitle.textContent = text;
  overlayText.textContent = '';
  setTimeout(() => { if (overlayTitle.textContent === text) overlay.classList.add('hidden'); }, 1500);
}

pasteButton.addEventListener('click', async () => {
  closeMenu();
  let text;
  try {
    text = await navigator.clipboard.readText();
  } catch {
    stats.clipboard.error = 'not allowed';
    return notice('The browser did not allow reading the clipboard');
  }
  if (new TextEncoder().encode(text).length > MAX_CLIPBOARD) {
    stats.clipboard.error = 'too long';
    return notice('The clipboard holds more than 64 KiB of text');
  }
  request({ type: 'paste', text });
  stats.clipboard.pasted++;
  notice('Pasted into the game');
});
copyButton.addEventListener('click', () => { closeMenu(); request({ type: 'copy' }); });

async function copied(text) {
  stats.clipboard.copied = text;
  try {
    await navigator.clipboard.writeText(text);
    notice(text ? 'Copied from the game' : 'The game\'s clipboard is empty');
  } catch {
    stats.clipboard.error = 'not allowed';
    notice('The browser did not allow writing the clipboard');
  }
}

// ---------------------------------------------------------------- rumble
// The game's rumble for this seat, on every pad this page reads (their vibration motors,
// strong and weak), and on a phone's own while its touch pad plays. The motors hold until
// the game changes them; an effect lasts a second, so it is renewed while they are on.
stats.rumble = { strong: 0, weak: 0, effects: 0 };
let rumbleTimer = null;
function rumble(strong, weak) {
  Object.assign(stats.rumble, { strong, weak });
  clearInterval(rumbleTimer);
  rumbleTimer = null;
  const on = strong > 0 || weak > 0;
  const play = () => {
    for (const pad of navigator.getGamepads?.() || []) {
      const actuator = pad?.vibrationActuator;
      if (!actuator) continue;
      stats.rumble.effects++;
      const done = on
        ? actuator.playEffect?.('dual-rumble', { duration: 1000, strongMagnitude: strong / 65535, weakMagnitude: weak / 65535 })
        : actuator.reset?.();
      done?.catch?.(() => {});
    }
    if (document.body.classList.contains('touch')) navigator.vibrate?.(on ? 1000 : 0);
  };
  play();
  if (on) rumbleTimer = setInterval(play, 900);
}

// ---------------------------------------------------------------- microphone
// Off until the player turns it on (the browser asks for it then, on that click). It goes
// as a second Opus track on this connection to the game only; the host takes the noise
// out unless the player turns that off, so the browser's own suppression stays off.
const micButton = document.getElementById('btn-mic');
const noiseButton = document.getElementById('btn-noise');
const micBadge = document.getElementById('mic-on');
let micAvailable = false, micTrack = null, micSender = null, noiseSuppression = true;
stats.microphone = { available: false, on: false, suppression: true };

function showMicrophone() {
  micButton.hidden = !(micAvailable && seated);
  noiseButton.hidden = micButton.hidden;
  micBadge.hidden = !micTrack;
  micButton.textContent = micTrack ? 'Microphone: on' : 'Microphone: off';
  noiseButton.textContent = `Noise suppression: ${noiseSuppression ? 'on' : 'off'}`;
  Object.assign(stats.microphone, { available: micAvailable && seated, on: !!micTrack, suppression: noiseSuppression });
}

async function microphoneOn() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, autoGainControl: true, noiseSuppression: false },
  });
  micTrack = media.getAudioTracks()[0];
  micTrack.addEventListener('ended', microphoneOff);
  await micSender?.replaceTrack(micTrack);
}

function microphoneOff() {
  micSender?.replaceTrack(null).catch(() => {});
  micTrack?.stop();
  micTrack = null;
  showMicrophone();
}

micButton.addEventListener('click', async () => {
  closeMenu();
  if (micTrack) return microphoneOff();
  try {
    await microphoneOn();
  } catch (e) {
    micButton.textContent = 'Microphone: not allowed';
    return;
  }
  showMicrophone();
});
noiseButton.addEventListener('click', () => {
  closeMenu();
  noiseSuppression = !noiseSuppression;
  request({ type: 'noise_suppression', on: noiseSuppression });
  showMicrophone();
});

// ---------------------------------------------------------------- WHEP
async function api(path, body, method = 'POST') {
  const response = await fetch(path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(json.error?.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  json.httpStatus = response.status;
  return json;
}

// Round trip to each region, best of three small requests: placement picks the nearest
// region with room.
// A lobby's members get their tickets from the lobby (a member of another platform has
// no other way into the session).
const lobby = params.get('lobby');
// A creator's live channel: watched like a session, its pictures come from the creator.
const channelId = params.get('channel');

function freshTicket(session, player, watchGrant) {
  if (lobby) return api(`/api/v1/lobbies/${encodeURIComponent(lobby)}/tickets`);
  if (channelId) return api(`/api/v1/channels/${encodeURIComponent(channelId)}/tickets`);
  const role = player ? 'player' : 'viewer';
  return api(`/api/v1/sessions/${encodeURIComponent(session.session_id)}/tickets`, { role, watch_grant: watchGrant });
}

/// The lobby's session once its owner has started it and it has a host.
async function lobbyTicket() {
  for (;;) {
    try {
      const answer = await api(`/api/v1/lobbies/${encodeURIComponent(lobby)}/tickets`);
      if (answer.httpStatus === 201) return answer;
      overlayTitle.textContent = `Your group is #${answer.queue_position} in line`;
    } catch (e) {
      if (e.status !== 409) throw e;
      overlayTitle.textContent = 'Waiting for the lobby\'s owner to start';
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// Every host is full: wait in the tenant's queue, showing the place in line.
async function waitInQueue(queued) {
  stats.state = 'queued';
  const leave = () => fetch(`/api/v1/sessions/${queued.session_id}`, { method: 'DELETE', keepalive: true });
  addEventListener('pagehide', leave);
  let info = queued;
  while (info.state === 'queued') {
    overlayTitle.textContent = `You are #${info.queue_position} in line`;
    overlayText.textContent = `About ${Math.max(1, Math.round(info.estimated_wait_secs / 60))} min. Keep this page open.`;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    info = await api(`/api/v1/sessions/${queued.session_id}`, undefined, 'GET');
  }
  removeEventListener('pagehide', leave);
  overlayTitle.textContent = 'Your turn! Connecting…';
  overlayText.textContent = '';
  return api(`/api/v1/sessions/${queued.session_id}/tickets`, { role: 'player' });
}

async function whep(session, player) {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const videoTransceiver = pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  // A player's microphone: a second audio track, silent until the player turns it on.
  micSender = player ? pc.addTransceiver('audio', { direction: 'sendonly' }).sender : null;
  if (micSender && micTrack) micSender.replaceTrack(micTrack).catch(() => {});
  const capabilities = RTCRtpReceiver.getCapabilities?.('video');
  if (capabilities && videoTransceiver.setCodecPreferences) {
    const h264 = capabilities.codecs.filter((c) => c.mimeType === 'video/H264');
    const rest = capabilities.codecs.filter((c) => c.mimeType !== 'video/H264');
    h264.sort((a, b) => (b.sdpFmtpLine || '').includes('42e01f') - (a.sdpFmtpLine || '').includes('42e01f'));
    if (h264.length) videoTransceiver.setCodecPreferences([...h264, ...rest]);
  }
  seated = player;
  showTouchpad();
  // Viewers of a game open the channels too: the players may seat them on this connection.
  if (player || !channelId) {
    channel = pc.createDataChannel('input', { ordered: true });
    channel.binaryType = 'arraybuffer';
    channel.addEventListener('open', () => { stats.viewSize = null; sendViewSize(); });
    fastChannel = pc.createDataChannel('input-fast', { ordered: false, maxRetransmits: 0 });
    recentInputs.length = 0;
    // The server speaks on this channel only to say why the game ended (it quit or crashed).
    channel.onmessage = (e) => {
      if (typeof e.data !== 'string') return;
      try {
        const message = JSON.parse(e.data);
        if (onSeatMessage(message)) return;
        if (message.type === 'devices') {
          micAvailable = !!message.microphone;
          clipboardAvailable = !!message.clipboard;
          showMicrophone();
          showClipboard();
          return;
        }
        if (message.type === 'copied') { copied(String(message.text)); return; }
        if (message.type === 'rumble') { rumble(message.strong, message.weak); return; }
        if (message.type === 'ended') {
          stats.endedReason = String(message.reason);
          fail(stats.endedReason, 'The game ended');
          pc.close();
        }
      } catch { /* not ours */ }
    };
  }
  const stream = new MediaStream();
  pc.ontrack = (e) => {
    // Play out as soon as a frame is decoded: no extra jitter buffering.
    if ('jitterBufferTarget' in e.receiver) e.receiver.jitterBufferTarget = 0;
    if ('playoutDelayHint' in e.receiver) e.receiver.playoutDelayHint = 0;
    stream.addTrack(e.track);
    video.srcObject = stream;
  };
  pc.onconnectionstatechange = () => {
    // A dropped connection of a playing page is the watchdog's to mend (below).
    if (pc !== currentPc || stats.state === 'playing') {
      if (stats.endedReason && stats.state !== 'failed') fail(stats.endedReason, 'The game ended');
      return;
    }
    if (pc.connectionState === 'failed') fail('The connection failed. Check that UDP can reach the server (see docs/deployment.md).');
    if (pc.connectionState === 'disconnected' || pc.connectionState === 'closed') {
      if (stats.state !== 'failed') {
        if (stats.endedReason) fail(stats.endedReason, 'The game ended');
        else fail('The stream ended.');
      }
    }
  };
  currentPc = pc;
  window.cloudplayPeer = pc; // for tests: the connection's own getStats
  await pc.setLocalDescription(await pc.createOffer());
  // The server is ICE-lite and takes no trickle: send the offer with what we have after a
  // short wait; it learns our address from the connectivity checks anyway.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const timer = setTimeout(resolve, 500);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    });
  });
  const response = await fetch(session.whep_url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${session.ticket}` },
    body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    const json = await response.json().catch(() => ({}));
    throw new Error(json.error?.message || `WHEP answered ${response.status}`);
  }
  const resource = new URL(response.headers.get('Location'), session.whep_url).href;
  await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
  addEventListener('pagehide', () => fetch(resource, { method: 'DELETE', keepalive: true }));
  pc.resource = resource;
  return pc;
}

// ---------------------------------------------------------------- dropped connections
// No picture for 2 s: the player is told. For 4 s: the page reconnects to the same session
// with a fresh ticket (the host has let the silent connection go by then, so a player gets
// the seat back), trying for 30 s; a session that is gone offers to start again.
let currentPc = null;
let lastFrameAt = performance.now();
const TELL_AFTER_MS = 2_000, RECONNECT_AFTER_MS = 4_000, GIVE_UP_AFTER_MS = 30_000;

function watchConnection(session, player, watchGrant) {
  let mending = false;
  setInterval(async () => {
    if (stats.state !== 'playing' || mending) return;
    const silent = performance.now() - lastFrameAt;
    const told = !overlay.classList.contains('hidden') && overlayTitle.textContent === 'Connection lost';
    if (silent > TELL_AFTER_MS && !told) {
      overlay.classList.remove('hidden');
      overlayTitle.textContent = 'Connection lost';
      overlayText.textContent = 'Reconnecting…';
      startButton.hidden = true;
    } else if (silent <= TELL_AFTER_MS && told) {
      overlay.classList.add('hidden');
    }
    if (silent > RECONNECT_AFTER_MS) {
      mending = true;
      await reconnect(session, player, watchGrant);
      mending = false;
    }
  }, 250);
}

async function reconnect(session, player, watchGrant) {
  const started = performance.now();
  while (performance.now() - started < GIVE_UP_AFTER_MS && stats.state === 'playing') {
    try {
      // Leave the connection that stopped (or the attempt that never connected): its seat
      // is free at once for the next attempt.
      if (currentPc) {
        currentPc.close();
        if (currentPc.resource) fetch(currentPc.resource, { method: 'DELETE', keepalive: true }).catch(() => {});
      }
      const ticket = await freshTicket(session, player, watchGrant);
      const attempt = performance.now();
      const pc = await whep(ticket, player); // now the current connection
      // Back when the new connection decodes video (the element alone may show a frame
      // when its source changes).
      const decoded = async () => {
        let frames = 0;
        (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') frames = r.framesDecoded || 0; });
        return frames;
      };
      while (performance.now() - attempt < 5_000 && (await decoded()) < 5) await new Promise((r) => setTimeout(r, 200));
      if ((await decoded()) >= 5) {
        lastFrameAt = performance.now();
        stats.reconnects++;
        overlay.classList.add('hidden');
        return;
      }
    } catch (e) {
      if (e.status === 404 || e.status === 403) break; // the session is gone (or not ours)
    }
    await new Promise((r) => setTimeout(r, 2_000));
  }
  if (stats.state !== 'playing') return;
  fail('The game\'s server stopped answering. Your progress up to the last save is kept.', 'Connection lost');
  startButton.hidden = false;
  startButton.textContent = 'Start again';
  startButton.onclick = () => {
    const game = params.get('game') || 'neon-cycles';
    location.href = `/play?game=${encodeURIComponent(game)}&new=1`;
  };
}

async function main() {
  const watch = params.get('watch') || channelId;
  const resume = params.get('resume');
  let session;
  if (channelId) {
    // A creator's picture: nothing to share from here but the page's own link.
    document.getElementById('btn-moment').hidden = true;
    document.getElementById('btn-share').hidden = true;
    session = await freshTicket(null, false);
  } else if (watch) {
    const grant = params.get('grant') || undefined;
    session = await api(`/api/v1/sessions/${encodeURIComponent(watch)}/tickets`, { role: 'viewer', watch_grant: grant });
  } else if (lobby) {
    session = await lobbyTicket();
  } else if (resume) {
    session = await api(`/api/v1/sessions/${encodeURIComponent(resume)}/tickets`, { role: 'player' });
  } else {
    const game = params.get('game') || 'neon-cycles';
    const [width, height] = params.get('width')
      ? [Number(params.get('width')), Number(params.get('height') || 720)]
      : sizeForScreen();
    const options = { probe: params.get('probe') === '1', width, height, fps: Number(params.get('fps') || 60) };
    stats.requested = [width, height];
    // A reload, or Play again on the same game, continues the player's live session of it
    // (it outlives the page for a minute so it can be resumed) instead of starting another.
    const mine = await api('/api/v1/sessions', undefined, 'GET').catch(() => ({ sessions: [] }));
    const same = (o) => o && ['width', 'height', 'fps', 'probe'].every((k) => o[k] === options[k]);
    const live = (mine.sessions || []).find((s) => s.game === game && s.state === 'placed' && same(s.options));
    const moment = params.get('moment') || undefined;
    if (live && params.get('new') !== '1' && !moment) {
      session = await api(`/api/v1/sessions/${encodeURIComponent(live.session_id)}/tickets`, { role: 'player' });
    } else {
      const rtt_ms = await measureRegions();
      session = await api('/api/v1/sessions', { game, options, rtt_ms, from_moment: moment });
      if (session.httpStatus === 202) session = await waitInQueue(session);
    }
  }
  stats.sessionId = session.session_id;
  playStarted = performance.now();
  seatButton.hidden = !watch || !!channelId;
  openButton.hidden = !!watch;
  await whep(session, !watch);
  if (touchScreen) chooseTouchMode();
  video.requestVideoFrameCallback(onVideoFrame);
  setInterval(() => updateStats(currentPc).catch(() => {}), 1000); // a closed one has none
  watchConnection(session, !watch, watch && !channelId ? params.get('grant') || undefined : undefined);
  video.addEventListener('playing', () => {
    stats.state = 'playing';
    // The app's worker fetches the page shell: only once the picture plays, so that it
    // never competes with the first frame.
    registerServiceWorker();
    overlayTitle.textContent = watch ? 'Watching' : 'Ready';
    overlayText.textContent = watch ? '' : 'Keyboard, mouse, gamepad or touch: press anything to join.';
    startButton.hidden = false;
  }, { once: true });
}

// The picture's size for this screen: the area the page shows it in, in device pixels, up to
// the next size of the ladder (what software encoding carries at 60 fps).
const SIZES = [[854, 480], [1280, 720], [1920, 1080]];
function sizeForScreen() {
  const stage = document.getElementById('stage').getBoundingClientRect();
  const scale = window.devicePixelRatio || 1;
  // The picture is 16:9: the larger of what the stage's width and height allow.
  const wanted = Math.min(stage.width * scale, (stage.height * scale * 16) / 9);
  return SIZES.find(([w]) => w >= wanted * 0.9) || SIZES[SIZES.length - 1];
}

// A player tells the host the area it shows the picture in (device pixels) when it
// connects and whenever the window or the orientation changes (once it has settled): the
// host encodes no larger than the largest player's area needs, without reconnecting.
function sendViewSize() {
  if (!seated) return;
  const stage = document.getElementById('stage').getBoundingClientRect();
  const scale = window.devicePixelRatio || 1;
  const [width, height] = [Math.round(stage.width * scale), Math.round(stage.height * scale)];
  if (width < 16 || height < 16 || (stats.viewSize && stats.viewSize[0] === width && stats.viewSize[1] === height)) return;
  if (channel?.readyState !== 'open') return;
  channel.send(JSON.stringify({ type: 'view_size', width, height }));
  stats.viewSize = [width, height];
}
let resizeTimer = null;
const resized = () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(sendViewSize, 400); };
addEventListener('resize', resized);
screen.orientation?.addEventListener?.('change', resized);

// While playing, the screen stays on (asked again when the page comes back into view).
let wakeLock = null;
async function keepScreenOn() {
  if (!navigator.wakeLock || document.visibilityState !== 'visible' || stats.state !== 'playing') return;
  try {
    wakeLock = await navigator.wakeLock.request('screen');
    stats.wakeLock = true;
  } catch { /* not allowed here (no gesture, battery saver): the screen may dim */ }
}
document.addEventListener('visibilitychange', () => { if (!wakeLock || wakeLock.released) keepScreenOn(); });

startButton.addEventListener('click', () => {
  // Browsers only play sound after a user gesture: unmute on the first click.
  video.muted = false;
  video.play().catch(() => {});
  overlay.classList.add('hidden');
  video.focus();
  keepScreenOn();
  // A phone plays fullscreen and sideways, as a handheld does (where the browser lets it).
  if (touchScreen && !document.fullscreenElement && document.documentElement.requestFullscreen) {
    document.documentElement.requestFullscreen({ navigationUI: 'hide' })
      .then(() => screen.orientation?.lock?.('landscape'))
      .catch(() => {});
  }
});
addEventListener('keydown', () => {
  if (stats.state === 'playing' && !overlay.classList.contains('hidden')) startButton.click();
}, { once: false });

main().catch((e) => fail(e.message || String(e)));
