// The resource tracker (Python's resource_tracker.py): a small helper process that
// unlinks named OS objects (POSIX semaphores, shared memory segments) that their
// owners leaked by dying without cleaning up.
//
// The tracker is started on the first register() of a process tree and listens on a
// Unix socket whose address travels to children in the environment
// (NODE_MP_RESOURCE_TRACKER); each process keeps one connection to it. Messages are
// lines "REGISTER <kind> <name>" / "UNREGISTER <kind> <name>". When a connection
// closes (its process exited or crashed), what it still had registered is handled by
// kind:
//   - 'semaphore': unlinked at once (a semaphore lives as long as its creator does);
//   - 'shared_memory': kept until the whole tree is gone (another process may still
//     attach to the segment by name, as in Python), then unlinked.
// The tracker exits once no process has been connected for a moment.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from './native';
import { debug, lazyChildProcess, registerAfterFork } from './util';

export type ResourceKind = 'semaphore' | 'shared_memory';

const ENV = 'NODE_MP_RESOURCE_TRACKER';
const KINDS: readonly ResourceKind[] = ['semaphore', 'shared_memory'];

let fd = -1;
let fdPid = -1;
let disabled = false;

registerAfterFork(() => {
  // The parent's connection is the parent's: a forked child opens its own on demand.
  if (fd >= 0) {
    try {
      native.close(fd);
    } catch {
      /* ignore */
    }
  }
  fd = -1;
  fdPid = -1;
}, () => fd >= 0);

function encodeAddress(addr: string): string {
  return addr.startsWith('\0') ? `@${addr.slice(1)}` : addr;
}
function decodeAddress(s: string): string {
  return s.startsWith('@') ? `\0${s.slice(1)}` : s;
}

function trackerScript(): string {
  return __filename;
}

/** Starts a tracker process; returns its address. */
function startTracker(): string {
  const tag = `node-mp-rt-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  const addr = process.platform === 'linux' ? `\0${tag}` : path.join(os.tmpdir(), `${tag}.sock`);
  const listenFd = native.unixListen(addr, 512);
  try {
    const child = lazyChildProcess().spawn(process.execPath, [trackerScript(), '--node-mp-resource-tracker', encodeAddress(addr)], {
      stdio: ['ignore', 'ignore', 'inherit', listenFd],
      detached: true,
      env: { ...process.env, [ENV]: encodeAddress(addr) },
    });
    child.unref();
    debug(`started resource tracker pid ${child.pid} at ${encodeAddress(addr)}`);
  } finally {
    native.close(listenFd);
  }
  process.env[ENV] = encodeAddress(addr);
  return addr;
}

function connect(): number {
  const known = process.env[ENV];
  if (known) {
    try {
      return native.unixConnect(decodeAddress(known));
    } catch {
      /* gone: start a new one */
    }
  }
  return native.unixConnect(startTracker());
}

function send(line: string): void {
  if (disabled) return;
  const buf = Buffer.from(line + '\n');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      if (fd < 0 || fdPid !== process.pid) {
        fd = connect();
        fdPid = process.pid;
      }
      let off = 0;
      while (off < buf.length) off += native.write(fd, buf, off);
      return;
    } catch (e) {
      if (fd >= 0) {
        try {
          native.close(fd);
        } catch {
          /* ignore */
        }
      }
      fd = -1;
      if (attempt === 1) {
        debug(`resource tracker unavailable: ${(e as Error).message}`);
        return;
      }
    }
  }
}

function checkArgs(kind: string, name: string): void {
  if (!KINDS.includes(kind as ResourceKind)) throw new TypeError(`unknown resource kind ${JSON.stringify(kind)}: use ${KINDS.join(' or ')}`);
  if (typeof name !== 'string' || name.length === 0 || /[\s]/.test(name)) {
    throw new TypeError(`resource name must be a non-empty string without whitespace (got ${JSON.stringify(name)})`);
  }
}

/** Asks the tracker to unlink `name` if this process dies without unregister(). */
export function register(kind: ResourceKind, name: string): void {
  checkArgs(kind, name);
  send(`REGISTER ${kind} ${name}`);
}

/** The resource was cleaned up by its owner (or is no longer this process's to clean). */
export function unregister(kind: ResourceKind, name: string): void {
  checkArgs(kind, name);
  send(`UNREGISTER ${kind} ${name}`);
}

/** Starts (or connects to) the tracker now, e.g. before starting children. */
export function ensureRunning(): void {
  send('PING - -');
}

/** The tracker's address in this process tree, if one was started. */
export function trackerAddress(): string | null {
  return process.env[ENV] ?? null;
}

/** Tests and special setups: stop talking to the tracker in this process. */
export function setTrackerEnabled(on: boolean): void {
  disabled = !on;
}

// ---------------------------------------------------------------------------
// The tracker process itself.

function unlinkResource(kind: ResourceKind, name: string): void {
  try {
    if (kind === 'semaphore') {
      (native.semUnlink as (n: string) => boolean)(name);
    } else {
      const shmUnlink = native.shmUnlink as ((n: string) => void) | undefined;
      if (typeof shmUnlink === 'function') shmUnlink(name);
      else if (process.platform === 'linux') fs.rmSync(path.join('/dev/shm', name.replace(/^\//, '')), { force: true });
    }
    debug(`resource tracker: unlinked leaked ${kind} ${name}`);
  } catch (e) {
    debug(`resource tracker: cannot unlink ${kind} ${name}: ${(e as Error).message}`);
  }
}

function runTracker(address: string): void {
  // Outlive Ctrl-C and terminal hang-ups of the tree: cleaning up is the point.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => {});
  const orphans = new Map<string, ResourceKind>(); // shared memory left by finished processes
  let connections = 0;
  let idleTimer: NodeJS.Timeout | null = null;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const net = require('node:net') as typeof import('node:net');  // only the tracker itself serves
  const server = net.createServer((sock) => {
    connections++;
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = null;
    const held = new Map<string, ResourceKind>();
    let pending = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        const [op, kind, name] = line.split(' ');
        if (!KINDS.includes(kind as ResourceKind)) continue;
        const key = `${kind} ${name}`;
        if (op === 'REGISTER') {
          held.set(key, kind as ResourceKind);
          orphans.delete(key);
        } else if (op === 'UNREGISTER') {
          held.delete(key);
          orphans.delete(key);
        }
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      for (const [key, kind] of held) {
        const name = key.slice(kind.length + 1);
        if (kind === 'semaphore') unlinkResource(kind, name);
        else orphans.set(key, kind);
      }
      held.clear();
      connections--;
      if (connections === 0) idleTimer = setTimeout(shutdown, 1500);
    });
  });
  function shutdown(): void {
    if (connections > 0) return;
    for (const [key, kind] of orphans) unlinkResource(kind, key.slice(kind.length + 1));
    orphans.clear();
    server.close();
    if (!address.startsWith('\0')) fs.rmSync(address, { force: true });
    process.exit(0);
  }
  server.listen({ fd: 3 });
  // Whoever started us connects at once; if nobody ever does, do not linger.
  idleTimer = setTimeout(shutdown, 10_000);
}

if (require.main === module && process.argv[2] === '--node-mp-resource-tracker') {
  runTracker(decodeAddress(process.argv[3] ?? ''));
}
