// What every page shares: the installable app's service worker, and moving around a page
// with a gamepad alone (a TV, a handheld) or the keyboard's arrows: the D-pad or left
// stick moves the focus to the nearest control that way, A selects, B goes back, Start (or
// Home) asks for the page's menu.

/// Registers the service worker that keeps the page shell for an installed app (never the
/// API: web/sw.js). Browsers allow it on https and on localhost only.
export function registerServiceWorker() {
  if ('serviceWorker' in navigator && window.isSecureContext) {
    navigator.serviceWorker.register('/sw.js').catch(() => {});
  }
}

const FOCUSABLE = 'button, a[href], select, input, textarea, [tabindex]:not([tabindex="-1"])';
const DIRECTIONS = { up: [0, -1], down: [0, 1], left: [-1, 0], right: [1, 0] };

function usable(element) {
  if (element.disabled || element.closest('[hidden]')) return false;
  const box = element.getBoundingClientRect();
  return box.width > 0 && box.height > 0 && getComputedStyle(element).visibility !== 'hidden';
}

/// Moves the focus from the focused control to the nearest one in `direction` within
/// `root` (the first one if nothing there is focused). Nearness favours what lies straight
/// ahead over what lies to the side.
export function moveFocus(direction, root = document) {
  const candidates = [...root.querySelectorAll(FOCUSABLE)].filter(usable);
  const current = document.activeElement;
  if (!candidates.includes(current)) {
    candidates[0]?.focus();
    return candidates[0] ?? null;
  }
  const [dx, dy] = DIRECTIONS[direction];
  const from = current.getBoundingClientRect();
  const cx = from.left + from.width / 2, cy = from.top + from.height / 2;
  let best = null, bestScore = Infinity;
  for (const element of candidates) {
    if (element === current) continue;
    const box = element.getBoundingClientRect();
    const x = box.left + box.width / 2 - cx, y = box.top + box.height / 2 - cy;
    const ahead = x * dx + y * dy;
    if (ahead <= 1) continue;
    const aside = Math.abs(x * dy) + Math.abs(y * dx);
    const score = ahead + 2 * aside;
    if (score < bestScore) { best = element; bestScore = score; }
  }
  if (best) {
    best.focus();
    best.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }
  return best;
}

const PAD = { a: 0, b: 1, select: 8, start: 9, up: 12, down: 13, left: 14, right: 15, home: 16 };
const REPEAT_AFTER_MS = 400, REPEAT_EVERY_MS = 150, STICK = 0.5;

/// Gamepad and arrow-key navigation of a page. `active()` says whether the page (rather
/// than a game) takes the pad now; `root()` where the focus may go; `back()` answers B and
/// Escape (true when it handled it); `menu()` answers Start and Home.
export function navigation({ active = () => true, root = () => document, back = () => false, menu = null } = {}) {
  const held = new Map(); // pad index → { direction, since, repeated, buttons }
  const press = (action) => {
    if (action in DIRECTIONS) moveFocus(action, root());
    else if (action === 'select') document.activeElement?.click?.();
    else if (action === 'back') {
      if (!back()) history.length > 1 && history.back();
    } else if (action === 'menu') {
      if (menu) menu();
      else moveFocus('down', root());
    }
  };
  function poll(now) {
    const pads = navigator.getGamepads ? [...navigator.getGamepads()] : [];
    for (const pad of pads) {
      if (!pad) continue;
      const state = held.get(pad.index) ?? { direction: null, since: 0, repeated: 0, buttons: 0 };
      const pressed = (i) => !!pad.buttons[i]?.pressed;
      let buttons = 0;
      for (const i of [PAD.a, PAD.b, PAD.start, PAD.home]) if (pressed(i)) buttons |= 1 << i;
      const fresh = buttons & ~state.buttons;
      const [ax, ay] = [pad.axes[0] || 0, pad.axes[1] || 0];
      const direction = pressed(PAD.up) || ay < -STICK ? 'up'
        : pressed(PAD.down) || ay > STICK ? 'down'
          : pressed(PAD.left) || ax < -STICK ? 'left'
            : pressed(PAD.right) || ax > STICK ? 'right' : null;
      if (active()) {
        if (fresh & (1 << PAD.a)) press('select');
        if (fresh & (1 << PAD.b)) press('back');
        if (fresh & ((1 << PAD.start) | (1 << PAD.home))) press('menu');
        if (direction && direction !== state.direction) {
          press(direction);
          state.since = now;
          state.repeated = now;
        } else if (direction && now - state.since > REPEAT_AFTER_MS && now - state.repeated > REPEAT_EVERY_MS) {
          press(direction);
          state.repeated = now;
        }
      }
      state.direction = direction;
      state.buttons = buttons;
      held.set(pad.index, state);
    }
    requestAnimationFrame(poll);
  }
  requestAnimationFrame(poll);
  addEventListener('keydown', (event) => {
    if (!active() || event.defaultPrevented) return;
    // A select is moved past, not changed: its options are for a pointer.
    const typing = event.target.closest?.('input, textarea, [contenteditable]');
    const direction = { ArrowUp: 'up', ArrowDown: 'down', ArrowLeft: 'left', ArrowRight: 'right' }[event.key];
    if (direction && !typing) {
      event.preventDefault();
      press(direction);
    } else if (event.key === 'Escape') {
      if (back()) event.preventDefault();
    }
  });
  return { press };
}
