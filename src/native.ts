// Loads the two native parts: the N-API addon (any Node >= 20) and the fork-park
// addon, which uses Node's C++ API and is built for one Node ABI (FORK.md item 5).
import * as fs from 'node:fs';
import * as path from 'node:path';
// eslint-disable-next-line @typescript-eslint/no-require-imports
import nodeGypBuild = require('node-gyp-build');

export interface FdWatcherHandle {
  start(events?: number): void;
  stop(): void;
  ref(): void;
  unref(): void;
  close(): void;
}

/** A named pipe listener (Windows only, native/win/named_pipe_win.cc). */
export interface PipeListenerHandle {
  /** The fd of the next connected pipe instance; rejects with code 'ECANCELED' once closed. */
  accept(): Promise<number>;
  close(): void;
}

export interface NativeBinding {
  // processes (native/fork.cc)
  /** defaultSigint: the child's SIGINT disposition is reset to the default at once. */
  fork(parkTimeoutMs?: number, defaultSigint?: boolean): number;
  /** POSIX only: SIGINT ignored (the forkserver) or back to its default. */
  setSigintIgnored?(ignored: boolean): void;
  setParkLibrary(path: string): boolean;
  /** After a fork, in the parent: V8's heap pages get their MADV_DONTFORK back (see fork.cc); returns how many ranges. */
  restoreDontfork(): number;
  /** Before preparing a fork: the platform's workers start parking meanwhile (fork() then finds them parked). */
  forkSoon(): void;
  /** The fork announced by forkSoon() will not happen. */
  forkCancelled(): void;
  exitNow(code: number): never;
  waitpid(pid: number, block?: boolean): number | null;
  waitpidNoReap(pid: number, block?: boolean): number | null;
  kill(pid: number, signal: number): boolean;
  getpid(): number;
  getppid(): number;
  /** POSIX only: the C environment as one string, entries "K=V" joined by NUL; null off the main thread. */
  environBlock?(): string | null;
  pipe(): [number, number];
  close(fd: number): void;
  dup(fd: number): number;
  dup2(from: number, to: number): void;
  setCloexec(fd: number, on?: boolean): void;
  fdIsOpen(fd: number): boolean;
  runLoopOnce(): boolean;
  loopAlive(): boolean;
  watchParentDeath(fd: number): void;
  setPdeathsig(signal: number): boolean;
  // sockets and raw fds (native/socket.cc)
  socketpair(): [number, number];
  unixListen(path: string, backlog?: number): number;
  unixConnect(path: string): number;
  accept(fd: number): number | null;
  sendMsg(fd: number, data: Buffer, fds?: number[]): number;
  recvMsg(fd: number, maxBytes: number, timeoutMs?: number): { data: Buffer; fds: number[] } | null;
  readExact(fd: number, length: number, timeoutMs?: number): Buffer | null;
  read(fd: number, maxBytes: number): Buffer | null;
  write(fd: number, data: Buffer, offset?: number): number;
  setNonblock(fd: number, on?: boolean): void;
  // connections (native/socket.cc, used by src/connection.ts)
  isSocket(fd: number): boolean;
  connSendText(fd: number, prefix: Buffer, text: string, isSocket: boolean): void;
  connRecv(fd: number, buf: Buffer, offset: number, length: number, isSocket: boolean, timeoutMs: number): number | [number, number[]];
  connSend(fd: number, header: Buffer, body: Buffer, offset: number, length: number, fds: number[] | null, isSocket: boolean): void;
  tcpListen(host: string, port: number, backlog?: number): [number, [string, number]];
  tcpConnect(host: string, port: number): [number, boolean];
  socketError(fd: number): void;
  setNodelay(fd: number): void;
  // fd watching (native/poll.cc)
  FdWatcher: new (fd: number, callback: (status: number, events: number) => void) => FdWatcherHandle;
  pollFds(fds: number[], timeoutMs?: number | null, events?: number): number[];
  // named pipes and handle passing, Windows only (native/win/named_pipe_win.cc)
  PipeListener?: new (name: string, backlog?: number) => PipeListenerHandle;
  pipeConnect?(name: string, timeoutMs?: number): number | null;
  duplicateHandleTo?(fd: number, pid: number): number;
  handleToFd?(handle: number, sourcePid?: number): number;
  closeRemoteHandle?(pid: number, handle: number): void;
  // other facilities add their functions here
  [name: string]: unknown;
}

export const packageRoot = path.resolve(__dirname, '..', '..');

// A local build wins; otherwise node-gyp-build finds a prebuild made by prebuildify.
const localBuild = path.join(packageRoot, 'build', 'Release', 'mp_native.node');
export const native: NativeBinding = fs.existsSync(localBuild) ? require(localBuild) : nodeGypBuild(packageRoot);

export const UV_READABLE = 1;
export const UV_WRITABLE = 2;
export const UV_DISCONNECT = 4;

/** Where the park addon for this Node ABI lives, or null if none was built. */
export function parkLibraryPath(): string | null {
  const abi = process.versions.modules;
  const p = path.join(packageRoot, 'build', 'park', `node-v${abi}-${process.platform}-${process.arch}`, 'mp_fork_park.node');
  return fs.existsSync(p) ? p : null;
}

let parkExports: { workerCount(): number; inMicrotask(): boolean } | null = null;

/** True inside a promise continuation, where a forked child could not run its own promises. */
export function inMicrotask(): boolean {
  return parkExports?.inMicrotask() ?? false;
}

let parkState: { ok: true; workers: number } | { ok: false; reason: string } | undefined;

/**
 * Loads the park addon once. Returns why forking is impossible, or null when it is possible.
 * Without parking, a forked Node child can deadlock in V8's platform (FORK.md item 5).
 */
export function ensureForkSupport(): string | null {
  if (parkState === undefined) {
    if (process.platform === 'win32') {
      parkState = { ok: false, reason: 'fork() does not exist on Windows' };
    } else {
      const p = parkLibraryPath();
      if (!p) {
        parkState = {
          ok: false,
          reason:
            `the fork-park addon was not built for this Node (ABI ${process.versions.modules}); ` +
            'rebuild with `npx node-gyp rebuild` or `node native/build_park.js`',
        };
      } else {
        try {
          const mod: { exports: { workerCount(): number; inMicrotask(): boolean } } = { exports: {} as never };
          process.dlopen(mod, p);
          native.setParkLibrary(p);
          parkExports = mod.exports;
          parkState = { ok: true, workers: mod.exports.workerCount() };
        } catch (e) {
          parkState = {
            ok: false,
            reason: `the fork-park addon at ${p} does not load in Node ${process.version}: ${(e as Error).message}`,
          };
        }
      }
    }
  }
  return parkState.ok ? null : parkState.reason;
}
