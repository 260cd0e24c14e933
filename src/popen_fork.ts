// Starting a child with fork() of this very process (Python's popen_fork.py), and the
// exit-watching logic the other start methods share.
import { native, ensureForkSupport, inMicrotask, UV_DISCONNECT, UV_READABLE, type FdWatcherHandle } from './native';
import type { Popen, Process } from './process';
import { forkDone, forkedChildKit, runForkedChild, warmForkedChildPath, type ForkedChildKit } from './spawn';
import { callFromIoCallback, closeFds, isSingleThreaded, pollTimeout, registerAfterFork } from './util';

// ---------------------------------------------------------------------------
// The lifeline: one pipe per parent. Children hold the read end; it reports EOF
// when the parent is gone (parentProcess().isAlive(), daemonic children's end).

let alivePipe: [number, number] | null = null;

export function aliveReadFd(): number {
  if (!alivePipe) alivePipe = native.pipe();
  return alivePipe[0];
}

registerAfterFork(() => {
  // The inherited write end would keep the parent looking alive to its other children;
  // the read end stays: it is this child's own view of its parent.
  if (alivePipe) closeFds([alivePipe[1]]);
  alivePipe = null;
}, () => alivePipe !== null);

// Watchers the parent had are not the child's business: fork() stopped them there
// (native StopInheritedWatchers), and the child forgets them.
const liveWatchers = new Set<FdWatcherHandle>();
registerAfterFork(() => liveWatchers.clear(), () => liveWatchers.size > 0);

// ---------------------------------------------------------------------------
// worker_threads at a fork: only the forking thread exists in the child, and a worker
// may hold a process-wide lock at that moment, which the child then waits for for ever.
// Python 3.12+ warns when a multi-threaded process forks; so do we, once, when a worker
// started after this library loaded is running (process 'worker' event).

const liveWorkers = new Set<object>();

if (isSingleThreaded()) {
  process.on('worker', (worker) => {
    liveWorkers.add(worker);
    worker.once('exit', () => liveWorkers.delete(worker));
  });
}
// A forked child inherits the parent's set: those workers do not exist in it.
registerAfterFork(() => liveWorkers.clear(), () => liveWorkers.size > 0);

/** The armed restore and the process that armed it (a forked child inherits it, armed). */
let restore: { timer: NodeJS.Timeout; pid: number } | null = null;

/**
 * The fork made V8's heap pages inheritable (MADV_DOFORK, FORK.md). Once this process has
 * not forked for RESTORE_AFTER_MS they get V8's MADV_DONTFORK back, so that Node's own
 * child_process spawns (fork + exec) do not copy the heap's page tables (fork.cc:
 * restoreDontfork). Not at once: the next fork would flip them all again (~0.8 ms per
 * fork with a 200 MB heap here, back to back).
 */
const RESTORE_AFTER_MS = 50;

function restoreDontforkLater(): void {
  const pid = process.pid;
  if (restore?.pid === pid) {
    restore.timer.refresh();
    return;
  }
  const armed = {
    pid,
    timer: setTimeout(() => {
      if (restore === armed) restore = null;
      // In a forked child the inherited timer fires too: the child's pages are its own business.
      if (process.pid === pid) native.restoreDontfork();
    }, RESTORE_AFTER_MS).unref(),
  };
  restore = armed;
}

let warnedOfWorkers = false;

function warnIfWorkersRun(): void {
  if (warnedOfWorkers || liveWorkers.size === 0) return;
  warnedOfWorkers = true;
  process.emitWarning(
    `fork() while ${liveWorkers.size} worker thread(s) run: only the thread that forks exists in the child, ` +
      'and a worker holding a process-wide lock at that moment would block the child for ever. ' +
      "Start processes before starting workers, or use the 'forkserver' start method.",
    { type: 'MultiprocessingWarning', code: 'MP_FORK_WITH_WORKERS' },
  );
}

/** Closes sentinel fds of Process objects dropped without close(). */
const sentinelFinalizer = new FinalizationRegistry<number[]>((fds) => closeFds(fds));

/**
 * Common part of every start method: a sentinel fd that becomes readable when the
 * child ends, watched by the event loop (no timer polling), and the exit status.
 */
export abstract class PopenBase implements Popen {
  abstract readonly method: string;
  pid = 0;
  sentinel = -1;
  returncode: number | null = null;
  private watcher: FdWatcherHandle | null = null;
  private waiters: Array<() => void> = [];
  private closed = false;
  private ownedFds: number[] = [];

  /** Reads the exit status once the sentinel is readable (may block briefly). */
  protected abstract readStatus(): number;

  /** Call at the end of launch: starts watching the sentinel. */
  protected watch(proc: Process, extraFds: number[] = []): void {
    this.ownedFds = [this.sentinel, ...extraFds];
    sentinelFinalizer.register(proc, this.ownedFds, this);
    const w = new native.FdWatcher(this.sentinel, () => this.onSentinel());
    w.start(UV_READABLE | UV_DISCONNECT);
    // A non-daemonic child keeps its parent's event loop alive, as Python waits for it.
    if (proc.daemon) w.unref();
    this.watcher = w;
    liveWatchers.add(w);
  }

  private stopWatching(): void {
    if (this.watcher) {
      liveWatchers.delete(this.watcher);
      this.watcher.close();
      this.watcher = null;
    }
  }

  private onSentinel(): void {
    this.stopWatching();
    if (this.returncode === null) this.returncode = this.readStatus();
    for (const wake of this.waiters.splice(0)) wake();
  }

  /** Records an exit status that did not come through the sentinel. */
  protected settle(code: number): void {
    this.returncode = code;
    for (const wake of this.waiters.splice(0)) wake();
  }

  poll(): number | null {
    if (this.returncode === null && !this.closed && this.sentinel >= 0 && native.pollFds([this.sentinel], 0).length > 0) this.onSentinel();
    return this.returncode;
  }

  waitSync(timeoutMs: number | null): number | null {
    if (this.returncode !== null || this.closed) return this.returncode;
    if (native.pollFds([this.sentinel], pollTimeout(timeoutMs)).length > 0) this.onSentinel();
    return this.returncode;
  }

  wait(timeoutMs: number | null): Promise<number | null> {
    if (this.poll() !== null || this.closed) return Promise.resolve(this.returncode);
    if (timeoutMs !== null && !(timeoutMs > 0)) return Promise.resolve(null);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const wake = () => {
        if (timer) clearTimeout(timer);
        resolve(this.returncode);
      };
      this.waiters.push(wake);
      if (timeoutMs !== null) {
        timer = setTimeout(() => {
          const i = this.waiters.indexOf(wake);
          if (i >= 0) this.waiters.splice(i, 1);
          resolve(this.poll());
        }, Math.min(timeoutMs, 0x7fffffff));
      }
    });
  }

  sendSignal(signal: number): void {
    if (this.poll() === null) native.kill(this.pid, signal);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopWatching();
    sentinelFinalizer.unregister(this);
    closeFds(this.ownedFds);
    for (const wake of this.waiters.splice(0)) wake();
  }
}

export function forkUnavailableReason(): string | null {
  if (process.platform === 'win32') return "the 'fork' start method does not exist on Windows";
  if (!isSingleThreaded()) {
    return "the 'fork' start method needs a process started with `node --single-threaded` " +
      '(V8 background threads deadlock or crash a forked copy of Node; see FORK.md). ' +
      "Use 'forkserver' (the default) or 'spawn', or restart node with --single-threaded";
  }
  const why = ensureForkSupport();
  return why ? `the 'fork' start method is unavailable: ${why}` : null;
}

/**
 * fork() of this process. The child continues inside start() and runs its target in
 * a loop of its own (spawn.ts). Inside a promise continuation V8 would never run the
 * child's own promises, so there the fork waits for the next turn of the event loop:
 * until then pid is null and join()/isAlive()/terminate() still behave.
 */
export class PopenFork extends PopenBase {
  readonly method = 'fork';
  private pending: { proc: Process; cancel: () => void } | null = null;
  private forked: Promise<void> | null = null;
  private onForked: (() => void) | null = null;

  constructor(proc: Process) {
    super();
    const why = forkUnavailableReason();
    if (why) throw new Error(why);
    if (inMicrotask()) {
      this.pending = { proc, cancel: callFromIoCallback(() => this.forkNow()) };
      this.forked = new Promise((resolve) => { this.onForked = resolve; });
    } else {
      this.doFork(proc);
    }
  }

  private forkNow(): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    try {
      this.doFork(pending.proc);
    } catch (e) {
      // Nobody can catch this any more: report it and look like a failed child.
      process.stderr.write(`Process ${pending.proc.name}: fork failed: ${(e as Error).message}\n`);
      this.settle(255);
    }
    this.onForked?.();
  }

  private doFork(proc: Process): void {
    // The platform's workers park (FORK.md item 5) while this prepares the fork.
    native.forkSoon();
    let pipe: number[] = [];
    let kit: ForkedChildKit;
    try {
      warmForkedChildPath();
      pipe = native.pipe();
      kit = forkedChildKit(aliveReadFd());
    } catch (e) {
      native.forkCancelled();
      closeFds(pipe);
      throw e;
    }
    const [r, w] = pipe;
    let pid: number;
    try {
      pid = native.fork();
    } catch (e) {
      forkDone(kit);
      closeFds([r, w]);
      throw e;
    }
    if (pid === 0) {
      // The child must never return into the parent's code, even on an error here.
      try {
        native.close(r);
        runForkedChild(proc, kit, w);
      } catch (e) {
        process.stderr.write(`Process ${proc.name}: failed to start in the forked child: ${(e as Error)?.stack ?? e}\n`);
      }
      native.exitNow(70);
    }
    forkDone(kit);
    restoreDontforkLater();
    // After the fork: a warning queued before it would be emitted by the child too.
    warnIfWorkersRun();
    native.close(w);
    this.pid = pid;
    this.sentinel = r;
    this.watch(proc);
  }

  override poll(): number | null {
    return this.pending ? null : super.poll();
  }

  override waitSync(timeoutMs: number | null): number | null {
    if (this.pending) {
      throw new Error('this process forks at the next turn of the event loop (start() ran inside a promise ' +
        'continuation); await join() instead of joinSync()');
    }
    return super.waitSync(timeoutMs);
  }

  override async wait(timeoutMs: number | null): Promise<number | null> {
    if (this.pending && this.forked) {
      const started = Date.now();
      await this.forked;
      if (timeoutMs !== null) timeoutMs = Math.max(0, timeoutMs - (Date.now() - started));
    }
    return super.wait(timeoutMs);
  }

  override sendSignal(signal: number): void {
    if (this.pending) {
      // Not forked yet: it never will be, and ends as if killed by the signal.
      this.pending.cancel();
      this.pending = null;
      this.settle(-signal);
      this.onForked?.();
      return;
    }
    super.sendSignal(signal);
  }

  protected readStatus(): number {
    // The pipe closes during the child's exit, a moment before it can be reaped.
    return native.waitpid(this.pid, true) ?? 255;
  }
}
