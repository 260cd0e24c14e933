// Process-wide bookkeeping shared by the modules: after-fork hooks, exit hooks, debug output.
import { native, UV_READABLE, type FdWatcherHandle } from './native';

// Node modules that take 10-20 ms to load and that many processes never use (a spawned
// child, a forkserver child): loaded on first use.
let childProcessModule: typeof import('node:child_process') | undefined;
let cryptoModule: typeof import('node:crypto') | undefined;
/* eslint-disable @typescript-eslint/no-require-imports */
export function lazyChildProcess(): typeof import('node:child_process') {
  return (childProcessModule ??= require('node:child_process') as typeof import('node:child_process'));
}
export function lazyCrypto(): typeof import('node:crypto') {
  return (cryptoModule ??= require('node:crypto') as typeof import('node:crypto'));
}
/* eslint-enable @typescript-eslint/no-require-imports */

export type Hook = () => void;
const afterForkHooks: Array<{ hook: Hook; needed: (() => boolean) | null }> = [];

/**
 * `hook` runs in a child created by fork() (fork or forkserver), before any user code.
 * `needed`, if given, says whether this process has anything for the hook to undo: a
 * 'fork' parent asks it before forking (afterForkHooksNeeded) and its child runs only the
 * hooks needed, since each first call costs a forked child (a cold copy) ~10-20 µs.
 */
export function registerAfterFork(hook: Hook, needed: (() => boolean) | null = null): void {
  afterForkHooks.push({ hook, needed });
}

/** The hooks a child forked now must run (asked in the parent, just before the fork). */
export function afterForkHooksNeeded(): Hook[] {
  const out: Hook[] = [];
  for (const h of afterForkHooks) if (h.needed === null || h.needed()) out.push(h.hook);
  return out;
}

/** In a forked child: the hooks afterForkHooksNeeded() gave the parent, or else all. */
export function runAfterForkHooks(hooks: readonly Hook[] | null = null): void {
  if (hooks) for (const hook of hooks) hook();
  else for (const h of afterForkHooks) h.hook();
}

/**
 * Returns `ensure()`, which puts `run` on this process's 'exit' once: once per pid, since a
 * forked child starts without its parent's 'exit' listeners (they are dropped) but with the
 * parent's memory, where a plain "installed" flag would say yes.
 */
export function exitHookPerProcess(run: Hook): () => void {
  let installedIn = 0;
  return () => {
    if (installedIn === process.pid) return;
    installedIn = process.pid;
    process.on('exit', run);
  };
}

// ---------------------------------------------------------------------------
// A clean place to fork from. A forked child continues inside the call that forked
// and runs a nested event loop. Inside a promise continuation V8 would never run the
// child's own microtasks, and inside Node's setImmediate/timer processing the nested
// loop re-enters that processing (seen crashing in CheckImmediate). An I/O callback
// is neither: the forkserver has always forked from one. So deferred work that will
// fork runs from the callback of a self-pipe watched by the loop.

interface Doorbell { r: number; w: number; watcher: FdWatcherHandle; queue: Hook[] }
let doorbell: Doorbell | null = null;
const ONE_BYTE = Buffer.from([1]);

// One call per callback: a child forked by a call must not find the parent's
// continuations of an earlier call in its microtask queue (they would run there).
function ringBell(bell: Doorbell): void {
  while (native.read(bell.r, 64)?.length) { /* drain */ }
  const fn = bell.queue.shift();
  if (bell.queue.length > 0) native.write(bell.w, ONE_BYTE);
  else bell.watcher.unref();
  fn?.();
}

/**
 * Runs `fn` at the next turn of the event loop, from an I/O callback (see above).
 * Keeps the loop alive until then. Returns a function that cancels the call.
 */
export function callFromIoCallback(fn: Hook): () => void {
  if (!doorbell) {
    const [r, w] = native.pipe();
    native.setNonblock(r, true);
    native.setNonblock(w, true);
    const bell: Doorbell = { r, w, watcher: null as unknown as FdWatcherHandle, queue: [] };
    bell.watcher = new native.FdWatcher(r, () => ringBell(bell));
    bell.watcher.start(UV_READABLE);
    bell.watcher.unref();
    doorbell = bell;
  }
  const bell = doorbell;
  if (bell.queue.length === 0) {
    native.write(bell.w, ONE_BYTE); // 0 if full: a byte is pending anyway
    bell.watcher.ref();
  }
  bell.queue.push(fn);
  return () => {
    const i = bell.queue.indexOf(fn);
    if (i >= 0) bell.queue.splice(i, 1);
    if (bell.queue.length === 0) bell.watcher.unref();
  };
}

registerAfterFork(() => {
  // The parent's pending calls are the parent's.
  if (!doorbell) return;
  doorbell.watcher.close();
  closeFds([doorbell.r, doorbell.w]);
  doorbell = null;
}, () => doorbell !== null);

const debugOn = /\bmultiprocessing\b/.test(process.env.NODE_DEBUG ?? '');

export function debug(message: string): void {
  if (debugOn) process.stderr.write(`[multiprocessing ${native.getpid()}] ${message}\n`);
}

/** True when V8 runs without background threads, the condition for 'fork' (FORK.md item 5). */
export function isSingleThreaded(): boolean {
  return process.execArgv.includes('--single-threaded');
}

/** Closes fds, ignoring ones already closed. */
export function closeFds(fds: Iterable<number>): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      /* already closed */
    }
  }
}

/** Milliseconds -> a poll timeout: null/undefined = for ever (-1), <= 0 = do not wait. */
export function pollTimeout(ms: number | null | undefined): number {
  if (ms === undefined || ms === null) return -1;
  if (!(ms > 0)) return 0;
  return Math.min(Math.ceil(ms), 0x7fffffff);
}

export function checkTimeout(ms: unknown, what = 'timeout'): number | null {
  if (ms === undefined || ms === null) return null;
  if (typeof ms !== 'number' || Number.isNaN(ms)) {
    throw new TypeError(`${what} must be a number of milliseconds, null or undefined (got ${String(ms)})`);
  }
  return ms;
}

export const signals: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };
