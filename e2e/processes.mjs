// cloudplay processes for the browser tests and benchmarks that need their own: a server
// (`serve`), optionally behind the network emulator's relay (`netem`) on its media port.
// They run the binary CLOUDPLAY_BIN (default ../target/release/cloudplay) in a scratch
// directory, removed when node exits.
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const bin = process.env.CLOUDPLAY_BIN || new URL('../target/release/cloudplay', import.meta.url).pathname;
const scratch = mkdtempSync(join(tmpdir(), 'cloudplay-e2e-'));
process.on('exit', () => rmSync(scratch, { recursive: true, force: true }));

async function freeUdpPort() {
  const socket = createSocket('udp4');
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const { port } = socket.address();
  await new Promise((resolve) => socket.close(resolve));
  return port;
}

/// Runs `cloudplay args`; resolves with the child and the first match of `pattern` on stdout.
function start(args, env, pattern) {
  const child = spawn(bin, args, { cwd: scratch, stdio: ['ignore', 'pipe', 'inherit'], env: { CLOUDPLAY_LOG: 'warn', ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start within 20 s`)), 20_000);
    child.stdout.on('data', (chunk) => {
      const match = pattern.exec(chunk.toString());
      if (match) { clearTimeout(timer); resolve({ child, match: match[1] }); }
    });
    child.on('exit', (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

/// A `cloudplay serve` on a fresh in-memory database; with `scenario`, its media port is
/// reached through `cloudplay netem --scenario` (the server advertises the relay).
/// Resolves with `{ url, server, relay, stop }`.
export async function serve(scenario) {
  const env = { CLOUDPLAY_DATABASE_URL: 'sqlite::memory:' };
  let relay = null;
  if (scenario) {
    const mediaPort = await freeUdpPort();
    relay = await start(['netem', '--to', `127.0.0.1:${mediaPort}`, '--scenario', scenario], {}, /relay (\S+) →/);
    relay.startedAt = Date.now(); // the scenario's clock starts with the relay
    Object.assign(env, { CLOUDPLAY_MEDIA_PORT: String(mediaPort), CLOUDPLAY_MEDIA_ADVERTISE: relay.match });
  }
  const server = await start(['serve', '--listen', '127.0.0.1:0'], env, /open (http:\/\/[^/\s]+)\//);
  const stop = async () => {
    server.child.kill('SIGKILL');
    relay?.child.kill('SIGINT'); // it prints what it did to each direction
    await new Promise((r) => setTimeout(r, 300));
  };
  return { url: server.match, server: server.child, relay: relay?.child, startedAt: relay?.startedAt ?? Date.now(), stop };
}
