// The installed app's service worker: it keeps the page shell (pages, script, style, icons)
// so the app opens at once and says it is offline when it is. It answers nothing else —
// the API, WHEP/WHIP and the stream always go to the network — and asks the network first,
// so a new version of the shell is used as soon as it is reachable.
const CACHE = 'cloudplay-shell-v1';
const SHELL = [
  '/', '/play', '/web/player.js', '/web/app.js', '/web/regions.js', '/web/style.css',
  '/web/icon.svg', '/web/icon-192.png', '/web/icon-512.png', '/manifest.webmanifest',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
      // A page's own request starts while the worker boots, not after: the worker adds
      // no wait to opening a game.
      .then(() => self.registration.navigationPreload?.enable())
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) {
    return; // not the shell: the browser fetches it as if there were no worker
  }
  event.respondWith(
    Promise.resolve(event.preloadResponse)
      .then((preloaded) => preloaded || fetch(event.request))
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(url.pathname, copy));
        }
        return response;
      })
      .catch(() => caches.match(url.pathname).then((hit) => hit || Response.error())),
  );
});
