// Process-wide bookkeeping shared by the modules: after-fork hooks, exit hooks, debug output.
import { native } from './native';

type Hook = () => void;
const afterForkHooks: Hook[] = [];

/** Runs in a child created by fork() (fork or forkserver), before any user code. */
export function registerAfterFork(hook: Hook): void {
  afterForkHooks.push(hook);
}

export function runAfterForkHooks(): void {
  for (const hook of afterForkHooks) hook();
}

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
