// The forkserver (Python's forkserver.py): a helper node started once with
// --single-threaded, which forks a child per request. Clients talk to it over a Unix
// socket in a private directory, authenticate with an HMAC of a challenge, and pass
// the child's fds with SCM_RIGHTS. Each child's pid, then its exit status, arrive on a
// per-child socket whose client end is the Process sentinel (the pid from the server, or
// from a spare that read the request itself: see Spare; the status from the server).
import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import * as v8 from 'node:v8';
import { AuthenticationError, ProcessError } from './errors';
import { ParentProcess } from './process';
import { dumps, loads } from './reduction';
import { ensureForkSupport, native, UV_DISCONNECT, UV_READABLE, type FdWatcherHandle } from './native';
import { childExecArgv, frameLaunch, getExecutable } from './popen_spawn';
import { decodeLaunch, inheritedForkserver, prepareLaunchedChild, runLaunchedChild, runPreparedForkedChild, usePidAccessors } from './spawn';
import { callFromIoCallback, closeFds, debug, lazyChildProcess, lazyCrypto, registerAfterFork } from './util';

const CHALLENGE_BYTES = 32;
const STARTUP_TIMEOUT_MS = 30_000;
const serverMainPath = path.join(__dirname, 'forkserver_main.js');

function hmac(key: Buffer, challenge: Buffer): Buffer {
  return lazyCrypto().createHmac('sha256', key).update(challenge).digest();
}

interface ServerConfig {
  address: string;
  authkey: Buffer;
  preload: string[];
  /** Node built-in modules the client had loaded: the server loads them too (see below). */
  builtins: string[];
}

/**
 * Built-in modules worth loading in the server when its client has loaded them: a
 * child then finds them loaded, where importing its target's module would otherwise
 * load them again in every child (node:child_process alone takes ~20 ms here). Only
 * ones without side effects or warnings at load.
 */
const SHAREABLE_BUILTINS = new Set([
  'assert', 'async_hooks', 'buffer', 'child_process', 'crypto', 'dgram', 'diagnostics_channel', 'dns', 'dns/promises',
  'events', 'fs', 'fs/promises', 'http', 'http2', 'https', 'net', 'os', 'path', 'perf_hooks', 'querystring', 'readline',
  'stream', 'stream/promises', 'stream/web', 'string_decoder', 'timers', 'timers/promises', 'tls', 'tty', 'url', 'util',
  'v8', 'vm', 'worker_threads', 'zlib',
]);

function loadedShareableBuiltins(): string[] {
  const list = (process as unknown as { moduleLoadList?: string[] }).moduleLoadList ?? [];
  return list.filter((s) => s.startsWith('NativeModule ')).map((s) => s.slice('NativeModule '.length))
    .filter((name) => SHAREABLE_BUILTINS.has(name));
}

// ---------------------------------------------------------------------------
// Client side

export class ForkServer {
  private preload: string[] = [];
  private address: string | null = null;
  private authkey: Buffer | null = null;
  private conn = -1;
  private server: ChildProcess | null = null;
  private dir: string | null = null;

  setPreload(modules: string[]): void {
    if (!Array.isArray(modules) || modules.some((m) => typeof m !== 'string')) {
      throw new TypeError('setForkserverPreload(modules): modules must be an array of module specifiers or paths');
    }
    this.preload = modules.map((m) => (m.startsWith('.') ? path.resolve(m) : m));
  }

  /** Address and key of the server in use, handed to children so they reuse it. */
  info(): { address: string; authkey: Buffer } | null {
    return this.address && this.authkey ? { address: this.address, authkey: this.authkey } : null;
  }

  /** pid of the server this process started (null if it uses an inherited one). */
  get serverPid(): number | null {
    return this.server?.pid ?? null;
  }

  private ensureConnected(): void {
    if (this.conn >= 0) return;
    const inherited = inheritedForkserver();
    if (!this.address && inherited) {
      this.address = inherited.address;
      this.authkey = inherited.authkey;
    }
    if (this.address) {
      try {
        this.connect();
        return;
      } catch (e) {
        debug(`forkserver at ${this.address} unusable (${(e as Error).message}); starting a new one`);
        this.address = null;
      }
    }
    this.startServer();
    this.connect();
  }

  private connect(): void {
    const fd = native.unixConnect(this.address!);
    try {
      const challenge = native.readExact(fd, CHALLENGE_BYTES, STARTUP_TIMEOUT_MS);
      if (!challenge) throw new ProcessError('forkserver did not send its challenge');
      native.sendMsg(fd, hmac(this.authkey!, challenge));
      const ok = native.readExact(fd, 1, STARTUP_TIMEOUT_MS);
      if (!ok || ok[0] !== 0x4b) throw new AuthenticationError('forkserver refused our key');
    } catch (e) {
      native.close(fd);
      throw e;
    }
    this.conn = fd;
  }

  private startServer(): void {
    const why = ensureForkSupport();
    if (why) throw new Error(`the 'forkserver' start method is unavailable: ${why}`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mp-fs-'));
    fs.chmodSync(dir, 0o700);
    const config: ServerConfig = {
      address: path.join(dir, 's'), authkey: lazyCrypto().randomBytes(32), preload: this.preload, builtins: loadedShareableBuiltins(),
    };
    const [mine, theirs] = native.socketpair();
    let child: ChildProcess;
    try {
      const argv = ['--single-threaded', ...childExecArgv().filter((a) => a !== '--single-threaded'), serverMainPath];
      child = lazyChildProcess().spawn(getExecutable(), argv, { stdio: ['ignore', 'inherit', 'inherit', theirs], windowsHide: true });
    } finally {
      native.close(theirs);
    }
    child.on('error', () => {});
    try {
      if (child.pid === undefined) throw new ProcessError(`cannot start the forkserver with ${getExecutable()}`);
      const body = v8.serialize(config);
      const header = Buffer.alloc(4);
      header.writeUInt32BE(body.length);
      native.sendMsg(mine, Buffer.concat([header, body]));
      let reply: Buffer | null;
      try {
        reply = native.readExact(mine, 2, STARTUP_TIMEOUT_MS);
      } catch {
        reply = null;
      }
      if (!reply || reply.toString() !== 'ok') {
        child.kill('SIGKILL');
        throw new ProcessError('the forkserver failed to start (see its output above)');
      }
    } finally {
      native.close(mine);
    }
    child.unref();
    this.server = child;
    this.dir = dir;
    this.address = config.address;
    this.authkey = config.authkey;
    debug(`forkserver ${child.pid} listening at ${config.address}`);
  }

  /**
   * Asks the server for a child (`payload` is built once the server's address is known). `fds` go to the child: [status socket, stdin, stdout,
   * stderr, ...launch fds]. Returns the pid, read from `statusFd`.
   */
  spawnChild(payload: () => Buffer, launchFds: number[], statusTheirs: number, statusMine: number): number {
    const fds = [statusTheirs, 0, 1, 2, ...launchFds];
    for (let attempt = 0; ; attempt++) {
      try {
        this.ensureConnected();
        const message = frameLaunch(payload(), launchFds.length);
        native.sendMsg(this.conn, message, fds);
        // The server never writes on the connection: readable there means it died
        // (possibly after taking our request), so wait on both.
        const ready = native.pollFds([statusMine, this.conn], STARTUP_TIMEOUT_MS);
        if (ready.length === 0) throw new ProcessError('the forkserver did not answer within 30 s');
        if (!ready.includes(statusMine) || native.pollFds([statusMine], 0).length === 0) {
          throw Object.assign(new ProcessError('the forkserver closed the connection'), { code: 'ECONNRESET' });
        }
        const reply = native.readExact(statusMine, 4, STARTUP_TIMEOUT_MS);
        if (!reply) throw new ProcessError('the forkserver did not answer within 30 s');
        const pid = reply.readInt32BE(0);
        if (pid < 0) throw new ProcessError(`the forkserver could not fork: errno ${-pid}`);
        return pid;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        const serverGone = code === 'EPIPE' || code === 'ECONNRESET' || code === 'ECONNREFUSED' ||
          code === 'ENOENT' || (e as Error).name === 'EOFError';
        if (!serverGone || attempt > 0) throw e;
        debug('forkserver gone; restarting it');
        this.dropConnection();
        this.address = null;
      }
    }
  }

  private dropConnection(): void {
    if (this.conn >= 0) closeFds([this.conn]);
    this.conn = -1;
  }

  /** Whether afterFork() has anything to drop. */
  get inUse(): boolean {
    return this.conn >= 0 || this.server !== null || this.dir !== null;
  }

  /** In a forked child: the connection is the parent's; the server may be reused. */
  afterFork(): void {
    this.dropConnection();
    this.server = null;
    this.dir = null;
  }
}

export const forkServer = new ForkServer();
registerAfterFork(() => forkServer.afterFork(), () => forkServer.inUse);

// ---------------------------------------------------------------------------
// Server side

interface ClientState {
  fd: number;
  watcher: FdWatcherHandle;
  buffer: Buffer;
  fds: number[];
}

/**
 * A child forked ahead of the next request, already through the part of a child's
 * start that does not depend on its target (after-fork hooks, listeners, the
 * copy-on-write faults and lazy compilation these cost): a request then needs no
 * fork at all. `sock` carries messages both ways. Server to spare: an assignment (a
 * request the server read: header + payload + the child's fds), or ATTACH with a
 * client's connection, whose next request the spare then reads itself: the request
 * reaches the future child directly, without waking the server first. Spare to server:
 * TAKEN with the request's status socket (the server reports the exit status there), or
 * RELEASED when the attached connection ended.
 */
interface Spare {
  pid: number;
  sock: number;
  watcher: FdWatcherHandle;
  /** The client whose requests go to this spare (its connection is not watched for data meanwhile). */
  attachedTo: ClientState | null;
  /** Its client went away while attached: RELEASED is on its way, do not attach it again yet. */
  releasing: boolean;
  fds: number[];
}

/** Fds every request carries before its launch fds: status socket, stdin, stdout, stderr. */
const REQUEST_FDS = 4;

/** Frame header of an assignment to a spare: payload length, fd count. */
const ASSIGNMENT_HEADER = 8;
/** In an assignment header's length field: an ATTACH message (one fd: the connection). */
const ATTACH = 0xffffffff;
const TAKEN = 0x54;
const RELEASED = 0x52;
/**
 * Spares kept: one attached to the last client, one getting ready. Each costs ~1 MB of
 * private memory; with two, starts in a row find one ready (preparing one takes a few ms).
 */
const SPARES = 2;
/**
 * A used spare's replacement waits, while another spare is ready, until the server's children
 * have ended or this long: forking it blocks the server ~1 ms, and a child ending meanwhile
 * waits that long for its exit status to reach its parent (its join()).
 */
const REPLACE_DELAY_MS = 30;

class Server {
  private clients = new Map<number, ClientState>();
  private kids = new Map<number, number>(); // pid -> status socket
  private listenFd = -1;
  private listenWatcher: FdWatcherHandle | null = null;
  private hadClient = false;
  private inChild = false;
  private spares: Spare[] = [];
  private spareScheduled = false;
  private replaceTimer: NodeJS.Timeout | null = null;
  /** The client that asked last (or connected last): the spare is attached to it. */
  private lastClient: ClientState | null = null;

  constructor(private readonly config: ServerConfig) {}

  listen(): void {
    this.listenFd = native.unixListen(this.config.address);
    fs.chmodSync(this.config.address, 0o600);
    this.listenWatcher = new native.FdWatcher(this.listenFd, () => this.acceptAll());
    this.listenWatcher.start(UV_READABLE);
    process.on('SIGCHLD', this.reap);
    // A client that never connects must not leave the server behind.
    setTimeout(() => {
      if (!this.hadClient && !this.inChild) this.shutdown();
    }, STARTUP_TIMEOUT_MS).unref();
    this.makeSpareSoon();
  }

  /** After a request used a spare: see REPLACE_DELAY_MS. */
  private replaceSpare(): void {
    if (this.spares.length === 0) {
      this.makeSpareSoon();
      return;
    }
    if (this.replaceTimer || this.inChild) return;
    this.replaceTimer = setTimeout(() => this.replaceSpareNow(), REPLACE_DELAY_MS);
    this.replaceTimer.unref();
  }

  private replaceSpareNow(): void {
    if (this.replaceTimer) clearTimeout(this.replaceTimer);
    this.replaceTimer = null;
    this.makeSpareSoon();
  }

  /** Forks the next spare from an I/O callback (a clean place to fork from: util.ts). */
  private makeSpareSoon(): void {
    if (this.spares.length >= SPARES || this.spareScheduled || this.inChild) return;
    this.spareScheduled = true;
    callFromIoCallback(() => {
      this.spareScheduled = false;
      this.makeSpare();
    });
  }

  private makeSpare(): void {
    if (this.spares.length >= SPARES || this.inChild) return;
    const [mine, theirs] = native.socketpair();
    const serverPid = native.getpid();
    let pid: number;
    try {
      pid = native.fork(undefined, true);
    } catch (e) {
      closeFds([mine, theirs]);
      debug(`forkserver: cannot fork a spare (${(e as Error).message}); forking per request`);
      return;
    }
    if (pid === 0) {
      this.inChild = true;
      native.close(mine);
      this.dropServerResources();
      runSpare(theirs, serverPid);
    }
    native.close(theirs);
    const spare: Spare = { pid, sock: mine, watcher: null as unknown as FdWatcherHandle, attachedTo: null, releasing: false, fds: [] };
    spare.watcher = new native.FdWatcher(mine, () => this.onSpareMessage(spare));
    spare.watcher.start(UV_READABLE);
    spare.watcher.unref();
    this.spares.push(spare);
    this.attachSpare();
    this.makeSpareSoon();
  }

  /** The spare that reads this client's requests, if any. */
  private spareAttachedTo(client: ClientState): Spare | undefined {
    return this.spares.find((s) => s.attachedTo === client);
  }

  /** A spare neither attached nor being released: the oldest, the likeliest to be ready. */
  private freeSpare(): Spare | undefined {
    return this.spares.find((s) => !s.attachedTo && !s.releasing);
  }

  /** Lets the spare read the last client's next request itself (see Spare). */
  private attachSpare(): void {
    const client = this.lastClient;
    if (this.spares.some((s) => s.attachedTo || s.releasing) || !client || !this.clients.has(client.fd)) return;
    const spare = this.freeSpare();
    if (!spare) return;
    // Only at a frame boundary: bytes of a request the server has begun to read stay its own.
    if (client.buffer.length > 0 || client.fds.length > 0) return;
    const header = Buffer.alloc(ASSIGNMENT_HEADER);
    header.writeUInt32BE(ATTACH, 0);
    header.writeUInt32BE(1, 4);
    try {
      native.sendMsg(spare.sock, header, [client.fd]);
    } catch {
      return; // it died waiting: reap() settles it
    }
    spare.attachedTo = client;
    // The server still learns that the client went away.
    client.watcher.start(UV_DISCONNECT);
  }

  private onSpareMessage(spare: Spare): void {
    for (;;) {
      let msg: { data: Buffer; fds: number[] } | null;
      try {
        msg = native.recvMsg(spare.sock, 64, 0);
      } catch {
        msg = { data: Buffer.alloc(0), fds: [] };
      }
      if (msg === null) return;
      if (msg.data.length === 0) {
        spare.watcher.stop(); // it ended: reap() settles it
        return;
      }
      spare.fds.push(...msg.fds);
      for (const byte of msg.data) {
        if (byte === TAKEN) {
          this.spareTaken(spare, spare.fds.shift() ?? -1);
          return;
        }
        if (byte === RELEASED) this.spareReleased(spare);
      }
    }
  }

  /** The spare took its client's request: it is that client's child now. */
  private spareTaken(spare: Spare, status: number): void {
    const client = spare.attachedTo;
    this.retireSpare(spare);
    this.kids.set(spare.pid, status);
    // The client's next request goes to the next spare.
    if (client) this.lastClient = client;
    this.attachSpare();
    this.replaceSpare();
  }

  /** The attached client's connection ended (or broke its framing): that client is gone. */
  private spareReleased(spare: Spare): void {
    const client = spare.attachedTo;
    spare.attachedTo = null;
    spare.releasing = false;
    if (client && this.clients.has(client.fd)) this.dropClient(client);
    else this.attachSpare();
  }

  /** Forgets the spare; the client it was attached to is the server's to read again. */
  private retireSpare(spare: Spare): void {
    const i = this.spares.indexOf(spare);
    if (i >= 0) this.spares.splice(i, 1);
    spare.watcher.close();
    closeFds([spare.sock, ...spare.fds.splice(0)]);
    const client = spare.attachedTo;
    spare.attachedTo = null;
    if (client && this.clients.has(client.fd)) client.watcher.start(UV_READABLE | UV_DISCONNECT);
  }

  /** Hands a request the server read to the spare; false if there is none free or it died. */
  private assignSpare(payload: Buffer, status: number, childFds: number[]): boolean {
    const spare = this.freeSpare();
    if (!spare) return false;
    try {
      const header = Buffer.alloc(ASSIGNMENT_HEADER);
      header.writeUInt32BE(payload.length, 0);
      header.writeUInt32BE(childFds.length, 4);
      const message = Buffer.concat([header, payload]);
      let sent = native.sendMsg(spare.sock, message, childFds);
      while (sent < message.length) sent += native.sendMsg(spare.sock, message.subarray(sent));
    } catch (e) {
      // It died waiting (SIGCHLD reaps it): the caller forks instead.
      debug(`forkserver: spare ${spare.pid} unusable (${(e as Error).message})`);
      this.retireSpare(spare);
      this.kids.set(spare.pid, -1);
      return false;
    }
    this.retireSpare(spare);
    closeFds(childFds);
    this.reportPid(spare.pid, status);
    return true;
  }

  private reportPid(pid: number, status: number): void {
    const reply = Buffer.alloc(4);
    reply.writeInt32BE(pid);
    try {
      native.write(status, reply);
      this.kids.set(pid, status);
    } catch {
      // The client went away: nobody wants the status.
      closeFds([status]);
      this.kids.set(pid, -1);
    }
  }

  private acceptAll(): void {
    for (;;) {
      const fd = native.accept(this.listenFd);
      if (fd === null) return;
      if (!this.authenticate(fd)) {
        closeFds([fd]);
        continue;
      }
      this.hadClient = true;
      native.setNonblock(fd, true);
      const watcher = new native.FdWatcher(fd, () => this.onClientData(fd));
      const client: ClientState = { fd, watcher, buffer: Buffer.alloc(0), fds: [] };
      this.clients.set(fd, client);
      watcher.start(UV_READABLE | UV_DISCONNECT);
      this.lastClient = client;
      this.attachSpare();
    }
  }

  private authenticate(fd: number): boolean {
    try {
      native.setNonblock(fd, false);
      const challenge = lazyCrypto().randomBytes(CHALLENGE_BYTES);
      native.sendMsg(fd, challenge);
      const answer = native.readExact(fd, 32, 5000);
      if (!answer || !lazyCrypto().timingSafeEqual(answer, hmac(this.config.authkey, challenge))) return false;
      native.sendMsg(fd, Buffer.from('K'));
      return true;
    } catch {
      return false;
    }
  }

  private onClientData(fd: number): void {
    const client = this.clients.get(fd);
    if (!client) return;
    const attached = this.spareAttachedTo(client);
    if (attached) {
      // Only hang-ups are watched while a spare reads this connection.
      attached.attachedTo = null;
      attached.releasing = true;
      this.dropClient(client);
      return;
    }
    let msg: { data: Buffer; fds: number[] } | null;
    try {
      msg = native.recvMsg(fd, 256 * 1024);
    } catch {
      msg = { data: Buffer.alloc(0), fds: [] };
    }
    if (msg === null) return;
    if (msg.data.length === 0) {
      this.dropClient(client);
      return;
    }
    client.buffer = client.buffer.length ? Buffer.concat([client.buffer, msg.data]) : msg.data;
    client.fds.push(...msg.fds);
    while (client.buffer.length >= 8) {
      const length = client.buffer.readUInt32BE(0);
      const fdCount = client.buffer.readUInt32BE(4);
      if (client.buffer.length < 8 + length) return;
      const payload = client.buffer.subarray(8, 8 + length);
      client.buffer = client.buffer.subarray(8 + length);
      const fds = client.fds.splice(0, REQUEST_FDS + fdCount);
      if (fds.length !== REQUEST_FDS + fdCount) {
        closeFds(fds);
        this.dropClient(client);
        return;
      }
      this.lastClient = client;
      this.forkChild(payload, fds);
      if (this.inChild) return;
    }
    this.attachSpare();
  }

  private forkChild(payload: Buffer, fds: number[]): void {
    const [status, stdin, stdout, stderr, ...launchFds] = fds;
    if (this.assignSpare(payload, status, fds.slice(1))) {
      this.replaceSpare();
      return;
    }
    let pid: number;
    try {
      pid = native.fork(undefined, true);
    } catch (e) {
      const reply = Buffer.alloc(4);
      reply.writeInt32BE(-(Math.abs(Number((e as NodeJS.ErrnoException).errno) || 1)));
      try {
        native.write(status, reply);
      } catch {
        /* client gone */
      }
      closeFds(fds);
      return;
    }
    if (pid === 0) {
      this.inChild = true;
      closeFds([status]);
      this.dropServerResources();
      takeStdio([stdin, stdout, stderr]);
      runLaunchedChild(decodeLaunch(Buffer.from(payload)), launchFds, true);
      return;
    }
    closeFds([stdin, stdout, stderr, ...launchFds]);
    this.reportPid(pid, status);
    this.makeSpareSoon();
  }

  /** In a freshly forked child: drop every server resource. */
  private dropServerResources(): void {
    process.removeListener('SIGCHLD', this.reap);
    if (this.replaceTimer) clearTimeout(this.replaceTimer);
    this.replaceTimer = null;
    this.listenWatcher?.close();
    for (const c of this.clients.values()) c.watcher.close();
    closeFds([this.listenFd, ...this.clients.keys(), ...[...this.kids.values()].filter((fd) => fd >= 0)]);
    for (const c of this.clients.values()) closeFds(c.fds);
    for (const spare of this.spares) {
      spare.watcher.close();
      closeFds([spare.sock, ...spare.fds]);
    }
    this.spares = [];
    this.lastClient = null;
    this.clients.clear();
    this.kids.clear();
  }

  private readonly reap = (): void => {
    for (const spare of [...this.spares]) {
      // A spare that took a request and already ended sent TAKEN first: read it, so that
      // the status is reported below rather than lost with the spare.
      this.onSpareMessage(spare);
      if (this.spares.includes(spare) && this.reapQuietly(spare.pid)) this.retireSpare(spare);
    }
    for (const [pid, status] of this.kids) {
      let code: number | null;
      try {
        code = native.waitpid(pid, false);
      } catch {
        code = 255;
      }
      if (code === null) continue;
      this.kids.delete(pid);
      if (status >= 0) {
        const reply = Buffer.alloc(4);
        reply.writeInt32BE(code);
        try {
          native.write(status, reply);
        } catch {
          /* client gone */
        }
        closeFds([status]);
      }
    }
    if (this.replaceTimer && this.kids.size === 0) this.replaceSpareNow();
  };

  /** True if pid has ended (and is reaped). */
  private reapQuietly(pid: number): boolean {
    try {
      return native.waitpid(pid, false) !== null;
    } catch {
      return true;
    }
  }

  private dropClient(client: ClientState): void {
    if (this.lastClient === client) this.lastClient = null;
    client.watcher.close();
    closeFds([client.fd, ...client.fds]);
    this.clients.delete(client.fd);
    if (this.clients.size === 0) this.shutdown();
  }

  private shutdown(): void {
    if (this.inChild) return;
    try {
      fs.rmSync(path.dirname(this.config.address), { recursive: true, force: true });
    } catch {
      /* already gone */
    }
    // Children still running keep going (reparented); their clients are gone too.
    process.exit(0);
  }
}

/** In a child: takes the client's stdin, stdout and stderr. */
function takeStdio(stdio: number[]): void {
  for (let i = 0; i < 3; i++) {
    native.dup2(stdio[i], i);
    if (stdio[i] !== i) closeFds([stdio[i]]);
  }
}

/**
 * Runs, in a spare, the pure parts of a launch on samples (both argument encodings, which
 * go through the V8 serializer or JSON): the spare is the future child, so the
 * copy-on-write faults and first-run costs they have happen while it waits.
 */
function warmSpare(): void {
  try {
    for (const args of [[1, 'x', { a: [true, null] }], [new Map([[1, 2]]), 2n]]) {
      loads(dumps({ args, props: {} }, 'forkserver', []), 'forkserver', []);
    }
    void new ParentProcess(0, 'sample', -1).name;
  } catch (e) {
    debug(`forkserver: spare warm-up failed: ${(e as Error).message}`);
  }
}

/**
 * Runs, once in the server, the Node internals a child runs after its assignment (found
 * with --log-function-events): compiled here, every child inherits their bytecode
 * instead of compiling them again (the library itself is compiled whole, eager_compile.ts).
 */
function warmNodeInternals(): void {
  const noop = (): void => {};
  const b = Buffer.alloc(64);
  b.write('warm-up');
  void b.toString('utf8', 0, 7);
  void b.subarray(0, 4).toString();
  void Buffer.byteLength('warm-up');
  b.copy(Buffer.alloc(64));
  void v8.deserialize(v8.serialize({ b, n: [1, 'x'] }));
  void process.cwd();
  void process.hrtime.bigint();
  const emitter = new EventEmitter();
  emitter.on('warm-up', noop);
  emitter.removeListener('warm-up', noop);
  emitter.removeAllListeners('warm-up');
  process.nextTick(noop);
  (process as unknown as { _tickCallback(): void })._tickCallback();
}

/**
 * Reads exactly n bytes from a non-blocking socket (its flags are shared with the server's
 * copy), waiting as needed; null at end of stream. Fds that arrive are appended to `fds`.
 */
function recvExactly(fd: number, n: number, fds: number[]): Buffer | null {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    let msg: { data: Buffer; fds: number[] } | null;
    try {
      msg = native.recvMsg(fd, Math.min(n - got, 1 << 24), -1);
    } catch {
      return null;
    }
    if (msg === null) continue;
    fds.push(...msg.fds);
    if (msg.data.length === 0) return null;
    parts.push(msg.data);
    got += msg.data.length;
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** One request frame (as the server reads them) from a client's connection; null if it ended or broke framing. */
function readRequest(conn: number): { payload: Buffer; fds: number[] } | null {
  const fds: number[] = [];
  const header = recvExactly(conn, 8, fds);
  const payload = header ? recvExactly(conn, header.readUInt32BE(0), fds) : null;
  if (!header || !payload || fds.length !== REQUEST_FDS + header.readUInt32BE(4)) {
    closeFds(fds);
    return null;
  }
  return { payload, fds };
}

/** The spare becomes the child of a request it read from its client's connection. */
function takeRequest(sock: number, conn: number, request: { payload: Buffer; fds: number[] }): never {
  const [status, stdin, stdout, stderr, ...launchFds] = request.fds;
  closeFds([conn]);
  // The server gets the status socket before the client learns our pid: whatever the
  // client does next (kill right after start()), the server reports the exit status.
  try {
    native.sendMsg(sock, Buffer.from([TAKEN]), [status]);
  } catch {
    // The server is gone and nobody would report our exit status: leave without running
    // (the client sees its status socket end, and retries with a new server).
    native.exitNow(0);
  }
  // A dying server still had our TAKEN delivered (its last thread holds its fds a moment
  // longer than its main thread lives); its death signal ends us before the client knows us.
  outliveServer();
  const reply = Buffer.alloc(4);
  reply.writeInt32BE(native.getpid());
  try {
    native.write(status, reply);
  } catch {
    /* the client is gone */
  }
  closeFds([sock, status]);
  takeStdio([stdin, stdout, stderr]);
  runPreparedForkedChild(decodeLaunch(request.payload), launchFds);
}

/**
 * Until it has a request, a spare dies with the server's main thread (Linux): a server
 * being killed keeps its fds open until its last thread is gone, and a spare that took a
 * request then would run a child whose exit status nobody reports. Elsewhere the end of
 * `sock` tells it.
 */
function dieWithServer(serverPid: number): void {
  if (native.setPdeathsig(9) && native.getppid() !== serverPid) native.exitNow(0);
}

/** A spare that became a child outlives the server, as a child the server forked does. */
function outliveServer(): void {
  native.setPdeathsig(0);
}

/** A spare's life: prepare, wait (blocking: it has nothing else to do) for a request, run it. */
function runSpare(sock: number, serverPid: number): never {
  dieWithServer(serverPid);
  prepareLaunchedChild(true);
  warmSpare();
  native.setNonblock(sock, false);
  let inbox: Buffer = Buffer.alloc(0);
  const inboxFds: number[] = [];
  let conn = -1; // the attached client's connection
  for (;;) {
    const ready = native.pollFds(conn >= 0 ? [sock, conn] : [sock], -1);
    // The server's messages first: its end (EOF) must win over a request, which a spare
    // must not take once no server will report the child's exit status.
    if (!ready.includes(sock)) {
      if (conn < 0 || !ready.includes(conn)) continue;
      const request = readRequest(conn);
      if (request) takeRequest(sock, conn, request);
      closeFds([conn]);
      conn = -1;
      try {
        native.sendMsg(sock, Buffer.from([RELEASED]));
      } catch {
        native.exitNow(0);
      }
      continue;
    }
    let msg: { data: Buffer; fds: number[] } | null;
    try {
      msg = native.recvMsg(sock, 64 * 1024, -1);
    } catch {
      msg = null;
    }
    // EOF: the server ended (or gave up on us) before we were needed.
    if (!msg || msg.data.length === 0) native.exitNow(0);
    inbox = inbox.length ? Buffer.concat([inbox, msg.data]) : msg.data;
    inboxFds.push(...msg.fds);
    while (inbox.length >= ASSIGNMENT_HEADER) {
      const length = inbox.readUInt32BE(0);
      if (length === ATTACH) {
        if (conn >= 0) closeFds([conn]);
        conn = inboxFds.shift() ?? -1;
        inbox = inbox.subarray(ASSIGNMENT_HEADER);
        continue;
      }
      if (inbox.length < ASSIGNMENT_HEADER + length) break;
      // An assignment: the server read the request itself.
      outliveServer();
      const nfds = inbox.readUInt32BE(4);
      const fds = inboxFds.splice(0);
      closeFds(conn >= 0 ? [sock, conn] : [sock]);
      if (fds.length !== nfds || nfds < 3) native.exitNow(70);
      takeStdio(fds.slice(0, 3));
      runPreparedForkedChild(decodeLaunch(inbox.subarray(ASSIGNMENT_HEADER, ASSIGNMENT_HEADER + length)), fds.slice(3));
    }
  }
}

async function loadPreload(spec: string): Promise<void> {
  try {
    require(spec);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ERR_REQUIRE_ESM' && code !== 'ERR_REQUIRE_ASYNC_MODULE') throw e;
    await import(path.isAbsolute(spec) ? pathToFileURL(spec).href : spec);
  }
}

/** Entry point of the server process (forkserver_main.js). */
export async function serverMain(): Promise<void> {
  const CONFIG_FD = 3;
  const header = native.readExact(CONFIG_FD, 4, STARTUP_TIMEOUT_MS);
  if (!header) process.exit(1);
  const config = v8.deserialize(native.readExact(CONFIG_FD, header.readUInt32BE(0))!) as ServerConfig;
  const why = ensureForkSupport();
  if (why) {
    process.stderr.write(`node-multiprocessing forkserver: ${why}\n`);
    process.exit(1);
  }
  usePidAccessors();
  for (const name of config.builtins) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      require(`node:${name}`);
    } catch {
      /* not in this Node version: a child loads what it needs itself */
    }
  }
  for (const spec of config.preload) {
    try {
      await loadPreload(spec);
    } catch (e) {
      process.stderr.write(`node-multiprocessing forkserver: cannot preload ${spec}: ${(e as Error).message}\n`);
    }
  }
  // Ctrl-C in a terminal reaches the whole process group: the server outlives it, as
  // Python's does, so its children's statuses are still reported (-2, not unknown) and its
  // client decides what happens next. Its children get SIGINT's default back at fork.
  native.setSigintIgnored?.(true);
  warmNodeInternals();
  const server = new Server(config);
  server.listen();
  native.sendMsg(CONFIG_FD, Buffer.from('ok'));
  native.close(CONFIG_FD);
}
