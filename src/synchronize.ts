// Synchronization between processes (Python's synchronize.py): Lock, RLock,
// Semaphore, BoundedSemaphore on POSIX named semaphores (native/semaphore.cc), and
// Condition, Event, Barrier built from them exactly as CPython builds them.
//
// - `xSync()` blocks the calling thread; `x()` returns a Promise. A pending async
//   acquire is served by one native waiter thread per contended semaphore (never a
//   libuv threadpool thread), so it does not stall fs, dns or crypto work.
// - Ownership (RLock, Condition) is per process, as Python's is per thread.
// - A process that dies holding a Lock leaves it held, as in Python.
// - Objects go to children as Process args under every start method: fork inherits
//   them; spawn and forkserver reopen the semaphore by name. The creator unlinks the
//   name when the object is closed, garbage-collected, or the creator exits; the
//   resource tracker unlinks the names of creators that crashed.
import { BaseContext, callable, defaultContext } from './context';
import { BrokenBarrierError } from './errors';
import { native } from './native';
import {
  type CallerUrl, captureCallerUrl, describeFunction, functionFromSource, type FunctionRef, kReduce, type Reduced, type ReduceContext, registerRebuilder,
  resolveFunction,
} from './reduction';
import * as tracker from './resource_tracker';
import { checkTimeout, exitHookPerProcess, registerAfterFork } from './util';
import * as os from 'node:os';

// ---------------------------------------------------------------------------
// The native binding

interface NativeSemLock {
  readonly slot: number;
  readonly name: string | null;
  readonly kind: number;
  readonly maxvalue: number;
  readonly closed: boolean;
  acquire(blocking?: boolean, timeoutMs?: number | null): boolean;
  acquireAsync(id: number, postOnSuccess?: NativeSemLock): boolean;
  cancel(id: number): boolean;
  release(): void;
  count(): number;
  isMine(): boolean;
  getValue(): number;
  isZero(): boolean;
  close(): void;
}

interface NativeSemLockClass {
  new (kind: number, value: number, maxvalue: number, nameOrPrefix: string, create: boolean): NativeSemLock;
  readonly RECURSIVE_MUTEX: number;
  readonly SEMAPHORE: number;
  readonly SEM_VALUE_MAX: number;
}

const NativeSem = native.SemLock as NativeSemLockClass;
const fastAcquire = native.semFastAcquire as (slot: number) => boolean;
const fastRelease = native.semFastRelease as (slot: number) => number;
const semUnlink = native.semUnlink as (name: string) => boolean;
const setSemCallback = native.setSemCallback as (cb: (ids: number[], errs: number[]) => void) => void;

export const RECURSIVE_MUTEX = NativeSem.RECURSIVE_MUTEX;
export const SEMAPHORE = NativeSem.SEMAPHORE;
export const SEM_VALUE_MAX = NativeSem.SEM_VALUE_MAX;

// ---------------------------------------------------------------------------
// Async waits: the native side calls back with the ids of granted waiters.

interface PendingWait {
  sem: SemLock;
  resolve(v: boolean): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout | null;
  signal: AbortSignal | null;
  onAbort: (() => void) | null;
  /** Set when the JS side gave up while the grant was already on its way. */
  late: { kind: 'timeout' } | { kind: 'abort'; reason: unknown } | null;
  keepOnLateAbort: boolean;
  info: { lateGrant: boolean } | null;
}

const pending = new Map<number, PendingWait>();
let nextWaitId = 1;

function errnoError(err: number, syscall: string): Error {
  const name = Object.entries(os.constants.errno).find(([, v]) => v === err)?.[0] ?? `errno ${err}`;
  const e = new Error(`${syscall}: ${name}`) as NodeJS.ErrnoException;
  e.code = name;
  e.errno = -err;
  e.syscall = syscall;
  return e;
}

function cleanupWait(w: PendingWait): void {
  if (w.timer) clearTimeout(w.timer);
  if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
  w.timer = null;
  w.onAbort = null;
}

setSemCallback((ids, errs) => {
  for (let i = 0; i < ids.length; i++) {
    const w = pending.get(ids[i]);
    if (!w) continue;
    pending.delete(ids[i]);
    cleanupWait(w);
    if (errs[i] !== 0) {
      w.reject(errnoError(errs[i], 'sem_timedwait'));
    } else if (w.late?.kind === 'abort') {
      if (w.info) w.info.lateGrant = true;
      if (!w.keepOnLateAbort) w.sem.release();
      w.reject(w.late.reason);
    } else {
      w.resolve(true);
    }
  }
});

registerAfterFork(() => {
  // The parent's pending waits are not this process's (its native state is reset too).
  pending.clear();
}, () => pending.size > 0);

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? Object.assign(new Error('The operation was aborted'), { name: 'AbortError', code: 'ABORT_ERR' });
}

/**
 * Waits for one unit of `sem` without blocking the event loop. Resolves true when
 * acquired, false on timeout; rejects with the signal's reason on abort.
 * `post`: a semaphore the waiter thread releases the moment it acquires (Condition).
 */
function waitAsync(sem: SemLock, timeout: number | null, signal: AbortSignal | null, post: SemLock | null,
  keepOnLateAbort = false, info: { lateGrant: boolean } | null = null): Promise<boolean> {
  const id = nextWaitId;
  nextWaitId = nextWaitId >= 0x7fffffff ? 1 : nextWaitId + 1;
  if (sem._native().acquireAsync(id, post ? post._native() : undefined)) return Promise.resolve(true);
  return new Promise<boolean>((resolve, reject) => {
    const w: PendingWait = { sem, resolve, reject, timer: null, signal, onAbort: null, late: null, keepOnLateAbort, info };
    pending.set(id, w);
    const giveUp = (late: NonNullable<PendingWait['late']>) => {
      if (!pending.has(id) || w.late) return;
      if (sem._native().cancel(id)) {
        pending.delete(id);
        cleanupWait(w);
        if (late.kind === 'abort') reject(late.reason);
        else resolve(false);
      } else {
        w.late = late; // the grant is on its way: settle when it arrives
      }
    };
    if (timeout !== null) w.timer = setTimeout(() => giveUp({ kind: 'timeout' }), Math.min(Math.max(timeout, 0), 0x7fffffff));
    if (signal) {
      w.onAbort = () => giveUp({ kind: 'abort', reason: abortReason(signal) });
      signal.addEventListener('abort', w.onAbort, { once: true });
    }
  });
}

// ---------------------------------------------------------------------------
// Names: the creator unlinks them when done (close, GC, exit).

let liveNames = new Set<string>();
const ensureUnlinkNamesAtExit = exitHookPerProcess(() => {
  for (const n of liveNames) unlinkName(n);
  liveNames.clear();
});

function unlinkName(name: string): void {
  try {
    semUnlink(name);
  } catch {
    /* already gone */
  }
  tracker.unregister('semaphore', name);
}

function trackName(name: string): void {
  liveNames.add(name);
  ensureUnlinkNamesAtExit();
  tracker.register('semaphore', name);
}

const nameFinalizer = new FinalizationRegistry<{ name: string; pid: number }>(({ name, pid }) => {
  if (pid !== process.pid || !liveNames.delete(name)) return;
  unlinkName(name);
});

registerAfterFork(() => {
  // Names the parent created are the parent's to unlink.
  liveNames = new Set();
}, () => liveNames.size > 0);

// ---------------------------------------------------------------------------
// Options and arguments

export interface AcquireOptions {
  /** false: do not wait (Python's block=False). Default true. */
  block?: boolean;
  /** Milliseconds; null/undefined waits for ever; 0 or negative does not wait. */
  timeout?: number | null;
  /** Async forms only: rejects the pending wait with the signal's reason. */
  signal?: AbortSignal;
}

export interface WaitOptions {
  signal?: AbortSignal;
}

export interface SyncObjectOptions {
  /** The context the object belongs to (ctx.Lock() sets it); a 'fork' context unlinks the name at once. */
  context?: BaseContext;
}

function parseAcquire(opts: AcquireOptions | boolean | undefined, asyncForm: boolean): { block: boolean; timeout: number | null; signal: AbortSignal | null } {
  if (opts === undefined || opts === null) return { block: true, timeout: null, signal: null };
  if (typeof opts === 'boolean') return { block: opts, timeout: null, signal: null };
  if (typeof opts !== 'object') throw new TypeError('acquire() takes an options object { block, timeout, signal }');
  const timeout = checkTimeout(opts.timeout);
  const block = opts.block === undefined ? true : Boolean(opts.block);
  if (!block && timeout !== null) throw new TypeError("can't specify a timeout for a non-blocking call");
  if (opts.signal !== undefined && !asyncForm) throw new TypeError('signal is only supported by the async forms (acquire(), wait())');
  if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw new TypeError('signal must be an AbortSignal');
  return { block, timeout, signal: opts.signal ?? null };
}

function checkSignal(signal: AbortSignal | null | undefined): void {
  if (signal?.aborted) throw abortReason(signal);
}

function namePrefix(): string {
  return `/mp-${process.pid}-`;
}

// ---------------------------------------------------------------------------
// SemLock

interface SemLockState {
  name: string;
  kind: number;
  maxvalue: number;
}

const kNative = Symbol('native');

/** The base of Lock, RLock, Semaphore and BoundedSemaphore: one OS semaphore. */
export class SemLock {
  /** @internal */ [kNative]: NativeSemLock;
  /** @internal */ _slot: number;
  /** @internal */ _creatorPid: number; // -1 when not the creator (rebuilt in a child)
  /** @internal */ _unlinked: boolean;

  constructor(kind: number, value: number, maxvalue: number, options: SyncObjectOptions = {}) {
    const ctx = options.context ?? defaultContext;
    const unlinkNow = process.platform === 'win32' || ctx.getStartMethod() === 'fork';
    const h = new NativeSem(kind, value, maxvalue, namePrefix(), true);
    this[kNative] = h;
    this._slot = h.slot;
    this._creatorPid = process.pid;
    this._unlinked = unlinkNow;
    const name = h.name as string;
    if (unlinkNow) {
      semUnlink(name);
    } else {
      trackName(name);
      nameFinalizer.register(this, { name, pid: process.pid }, this);
    }
  }

  /** @internal */
  _native(): NativeSemLock {
    return this[kNative];
  }

  /** The semaphore's OS name (null once closed). */
  get name(): string | null {
    return this[kNative].name;
  }

  /** Blocks until acquired; with a timeout returns false when it expires. */
  acquireSync(opts?: AcquireOptions | boolean): boolean {
    if (opts === undefined && fastAcquire(this._slot)) return true;
    const { block, timeout } = parseAcquire(opts, false);
    return this[kNative].acquire(block, timeout);
  }

  /** Resolves true once acquired, false on timeout; never blocks the event loop. */
  acquire(opts?: AcquireOptions | boolean): Promise<boolean> {
    if (opts === undefined && fastAcquire(this._slot)) return Promise.resolve(true);
    let o;
    try {
      o = parseAcquire(opts, true);
      checkSignal(o.signal);
      if (fastAcquire(this._slot)) return Promise.resolve(true);
      if (this[kNative].closed) this[kNative].acquire(false); // throws "closed"
    } catch (e) {
      return Promise.reject(e);
    }
    if (!o.block || (o.timeout !== null && !(o.timeout > 0))) return Promise.resolve(false);
    return waitAsync(this, o.timeout, o.signal, null);
  }

  release(): void {
    const status = fastRelease(this._slot);
    if (status !== 0) throwReleaseError(this, status);
  }

  /** @internal Python's _is_mine(): held by this process. */
  _isMine(): boolean {
    return this[kNative].isMine();
  }
  /** @internal Python's _count(): recursion depth held by this process. */
  _count(): number {
    return this[kNative].count();
  }
  /** @internal */
  _getValue(): number {
    return this[kNative].getValue();
  }
  /** @internal */
  _isZero(): boolean {
    return this[kNative].isZero();
  }

  /** Closes this process's handle; the creator also unlinks the name. Idempotent. */
  close(): void {
    const h = this[kNative];
    if (h.closed) return;
    const name = h.name as string;
    h.close();
    if (this._creatorPid === process.pid && !this._unlinked) {
      this._unlinked = true;
      nameFinalizer.unregister(this);
      if (liveNames.delete(name)) unlinkName(name);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  toString(): string {
    return describe(this, '');
  }

  /** @internal */
  _reduceState(ctx: ReduceContext, what: string): SemLockState {
    const h = this[kNative];
    if (ctx.method === 'connection') {
      throw new TypeError(
        `a ${what} can only be shared with child processes through inheritance: pass it in the args of a Process ` +
          '(or a Pool initializer) when starting it, not through a Queue or Connection; to share one with an ' +
          'already running process, use a Manager',
      );
    }
    if (h.closed) throw new Error(`cannot send a closed ${what} to another process`);
    if (this._unlinked && ctx.method !== 'fork') {
      throw new Error(
        `a ${what} created for the 'fork' start method is being shared with a process started by '${ctx.method}'. ` +
          'Create synchronization objects from the same context as the Process (ctx.Lock() with ctx = getContext(method))',
      );
    }
    return { name: h.name as string, kind: h.kind, maxvalue: h.maxvalue };
  }

  /** @internal Rebuilds in a receiving process: reopens the semaphore by name. */
  static _rebuildInto<T extends SemLock>(obj: T, state: SemLockState): T {
    let h: NativeSemLock;
    try {
      h = new NativeSem(state.kind, 0, state.maxvalue, state.name, false);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Error(
          `the semaphore ${state.name} no longer exists: the process that created it closed it or exited before ` +
            'this process received it (keep the object alive, e.g. referenced by the Process, until the child started)',
          { cause: e },
        );
      }
      throw e;
    }
    obj[kNative] = h;
    obj._slot = h.slot;
    obj._creatorPid = -1;
    obj._unlinked = false;
    return obj;
  }
}

function throwReleaseError(sem: SemLock, status: number): never {
  if (status === 1) {
    throw Object.assign(new RangeError('semaphore or lock released too many times'), { code: 'ERR_RELEASED_TOO_MANY_TIMES' });
  }
  if (status === 2) {
    throw Object.assign(new Error('cannot release an RLock that this process does not own: acquire() it first'), {
      code: 'ERR_LOCK_NOT_OWNED',
    });
  }
  if (status === 3) throw new Error(`the ${sem.constructor.name} is closed`);
  throw errnoError(-status, 'sem_post');
}

function describe(sem: SemLock, extra = ''): string {
  let state: string;
  try {
    state = sem._native().closed ? 'closed' : extra;
  } catch {
    state = 'unknown';
  }
  return `<${sem.constructor.name}(${state})>`;
}

// ---------------------------------------------------------------------------
// Lock, RLock, Semaphore, BoundedSemaphore

class LockImpl extends SemLock {
  constructor(options: SyncObjectOptions = {}) {
    super(SEMAPHORE, 1, 1, options);
  }
  [kReduce](ctx: ReduceContext): Reduced {
    return { type: 'mp.Lock', state: this._reduceState(ctx, 'Lock') };
  }
  override toString(): string {
    let owner = 'unknown';
    try {
      owner = this._isMine() ? 'owned by this process' : this._getValue() > 0 ? 'unlocked' : 'locked';
    } catch {
      /* closed */
    }
    return describe(this, owner);
  }
}

class RLockImpl extends SemLock {
  constructor(options: SyncObjectOptions = {}) {
    super(RECURSIVE_MUTEX, 1, 1, options);
  }
  [kReduce](ctx: ReduceContext): Reduced {
    return { type: 'mp.RLock', state: this._reduceState(ctx, 'RLock') };
  }
  override toString(): string {
    let s = 'unknown';
    try {
      s = this._isMine() ? `owned by this process, count=${this._count()}` : this._getValue() > 0 ? 'unlocked' : 'locked';
    } catch {
      /* closed */
    }
    return describe(this, s);
  }
}

function checkValue(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new TypeError(`semaphore value must be an integer (got ${String(value)})`);
  if (value < 0) throw new RangeError('semaphore initial value must be >= 0');
  if (value > SEM_VALUE_MAX) throw new RangeError(`semaphore initial value must be <= ${SEM_VALUE_MAX}`);
  return value;
}

class SemaphoreImpl extends SemLock {
  constructor(value = 1, options: SyncObjectOptions = {}, maxvalue = SEM_VALUE_MAX) {
    super(SEMAPHORE, checkValue(value), maxvalue, options);
  }
  /** The current value (not on macOS, which has no sem_getvalue). */
  getValue(): number {
    return this._getValue();
  }
  [kReduce](ctx: ReduceContext): Reduced {
    return { type: 'mp.Semaphore', state: this._reduceState(ctx, 'Semaphore') };
  }
  override toString(): string {
    let v = 'unknown';
    try {
      v = `value=${this._getValue()}`;
    } catch {
      /* closed */
    }
    return describe(this, v);
  }
}

class BoundedSemaphoreImpl extends SemaphoreImpl {
  constructor(value = 1, options: SyncObjectOptions = {}) {
    super(value, options, checkValue(value));
  }
  override [kReduce](ctx: ReduceContext): Reduced {
    return { type: 'mp.BoundedSemaphore', state: this._reduceState(ctx, 'BoundedSemaphore') };
  }
  override toString(): string {
    let v = 'unknown';
    try {
      v = `value=${this._getValue()}, maxvalue=${this._native().maxvalue}`;
    } catch {
      /* closed */
    }
    return describe(this, v);
  }
}

Object.defineProperty(LockImpl, 'name', { value: 'Lock' });
Object.defineProperty(RLockImpl, 'name', { value: 'RLock' });
Object.defineProperty(SemaphoreImpl, 'name', { value: 'Semaphore' });
Object.defineProperty(BoundedSemaphoreImpl, 'name', { value: 'BoundedSemaphore' });

for (const [type, cls] of [['mp.Lock', LockImpl], ['mp.RLock', RLockImpl], ['mp.Semaphore', SemaphoreImpl],
  ['mp.BoundedSemaphore', BoundedSemaphoreImpl]] as const) {
  registerRebuilder(type, (state: SemLockState) => SemLock._rebuildInto(Object.create(cls.prototype) as SemLock, state));
}

// ---------------------------------------------------------------------------
// Condition (CPython's algorithm: sleeping/woken counters and a wait semaphore)

type AnyLock = LockImpl | RLockImpl;

function remaining(end: number | null): number | null {
  return end === null ? null : end - performance.now();
}

class ConditionImpl {
  /** @internal */ _lock: AnyLock;
  /** @internal */ _sleepingCount: SemaphoreImpl;
  /** @internal */ _wokenCount: SemaphoreImpl;
  /** @internal */ _waitSemaphore: SemaphoreImpl;
  /** @internal */ _ownsLock: boolean;

  constructor(lock?: LockImpl | RLockImpl | null, options: SyncObjectOptions = {}) {
    if (lock !== undefined && lock !== null && !(lock instanceof LockImpl || lock instanceof RLockImpl)) {
      throw new TypeError('Condition(lock): lock must be a Lock or an RLock of node-multiprocessing');
    }
    this._ownsLock = !lock;
    this._lock = lock ?? new RLockImpl(options);
    this._sleepingCount = new SemaphoreImpl(0, options);
    this._wokenCount = new SemaphoreImpl(0, options);
    this._waitSemaphore = new SemaphoreImpl(0, options);
  }

  acquireSync(opts?: AcquireOptions | boolean): boolean {
    return this._lock.acquireSync(opts);
  }
  acquire(opts?: AcquireOptions | boolean): Promise<boolean> {
    return this._lock.acquire(opts);
  }
  release(): void {
    this._lock.release();
  }

  /** @internal */
  _checkOwned(what: string): void {
    if (!this._lock._isMine()) {
      throw Object.assign(new Error(`cannot ${what}: the Condition's lock is not held by this process (acquire() it first)`), {
        code: 'ERR_LOCK_NOT_OWNED',
      });
    }
  }

  /** Releases the lock, waits for notify() or the timeout, re-acquires. Resolves false on timeout. */
  async wait(timeout?: number | null, options: WaitOptions = {}): Promise<boolean> {
    const t = checkTimeout(timeout);
    checkSignal(options.signal);
    this._checkOwned('wait()');
    this._sleepingCount.release();
    const count = this._lock._count();
    for (let i = 0; i < count; i++) this._lock.release();
    let woken = false;
    let failure: { e: unknown } | null = null;
    const info = { lateGrant: false };
    try {
      if (t !== null && !(t > 0)) {
        woken = this._waitSemaphore.acquireSync(false);
        if (woken) this._wokenCount.release();
      } else {
        // The waiter thread releases wokenCount the moment it takes waitSemaphore, so
        // a notify() blocked in this very process is not waiting on our event loop.
        woken = await waitAsync(this._waitSemaphore, t, options.signal ?? null, this._wokenCount, true, info);
      }
    } catch (e) {
      failure = { e };
      // An abort that won against the grant: nobody posted wokenCount.
      if (!info.lateGrant) this._wokenCount.release();
    }
    if (!woken && !failure) this._wokenCount.release();
    // Re-acquire, even after an abort (as a `finally` would).
    for (let i = 0; i < count; i++) {
      if (!this._lock.acquireSync(false)) await this._lock.acquire();
    }
    if (failure) throw failure.e;
    return woken;
  }

  waitSync(timeout?: number | null): boolean {
    const t = checkTimeout(timeout);
    this._checkOwned('waitSync()');
    this._sleepingCount.release();
    const count = this._lock._count();
    for (let i = 0; i < count; i++) this._lock.release();
    try {
      return this._waitSemaphore.acquireSync({ timeout: t });
    } finally {
      this._wokenCount.release();
      for (let i = 0; i < count; i++) this._lock.acquireSync();
    }
  }

  /** Wakes up to n waiters (default 1), and waits until they have woken. */
  notify(n = 1): void {
    if (typeof n !== 'number' || Number.isNaN(n)) throw new TypeError('notify(n): n must be a number');
    this._checkOwned('notify()');
    // Account for waits that timed out since the last notify.
    while (this._wokenCount.acquireSync(false)) {
      const res = this._sleepingCount.acquireSync(false);
      if (!res) throw new Error('notify: internal error in Condition (sleeping count)');
    }
    let sleepers = 0;
    while (sleepers < n && this._sleepingCount.acquireSync(false)) {
      this._waitSemaphore.release();
      sleepers++;
    }
    if (sleepers) {
      for (let i = 0; i < sleepers; i++) this._wokenCount.acquireSync();
      // Re-zero waitSemaphore in case some waits just timed out.
      while (this._waitSemaphore.acquireSync(false)) {
        /* drain */
      }
    }
  }

  notifyAll(): void {
    this.notify(Infinity);
  }

  /** Waits until predicate() is truthy; resolves its last value (falsy after the timeout). */
  async waitFor<T>(predicate: () => T, timeout?: number | null, options: WaitOptions = {}): Promise<T> {
    const t = checkTimeout(timeout);
    let result = predicate();
    if (result) return result;
    const end = t === null ? null : performance.now() + t;
    while (!result) {
      const left = remaining(end);
      if (left !== null && left <= 0) break;
      await this.wait(left, options);
      result = predicate();
    }
    return result;
  }

  waitForSync<T>(predicate: () => T, timeout?: number | null): T {
    const t = checkTimeout(timeout);
    let result = predicate();
    if (result) return result;
    const end = t === null ? null : performance.now() + t;
    while (!result) {
      const left = remaining(end);
      if (left !== null && left <= 0) break;
      this.waitSync(left);
      result = predicate();
    }
    return result;
  }

  /** Closes the internal semaphores (and the lock if the Condition created it). */
  close(): void {
    this._sleepingCount.close();
    this._wokenCount.close();
    this._waitSemaphore.close();
    if (this._ownsLock) this._lock.close();
  }
  [Symbol.dispose](): void {
    this.close();
  }

  [kReduce](ctx: ReduceContext): Reduced {
    if (ctx.method === 'connection') this._lock._reduceState(ctx, 'Condition'); // throws the clear error
    return {
      type: 'mp.Condition',
      state: { lock: this._lock, s: this._sleepingCount, w: this._wokenCount, ws: this._waitSemaphore, owns: this._ownsLock },
    };
  }

  toString(): string {
    let s = 'unknown';
    try {
      s = `${this._lock}, ${this._sleepingCount._getValue() - this._wokenCount._getValue()}`;
    } catch {
      /* closed */
    }
    return `<Condition(${s})>`;
  }
}
Object.defineProperty(ConditionImpl, 'name', { value: 'Condition' });


registerRebuilder('mp.Condition', (st: { lock: AnyLock; s: SemaphoreImpl; w: SemaphoreImpl; ws: SemaphoreImpl; owns: boolean }) => {
  const c = Object.create(ConditionImpl.prototype) as ConditionImpl;
  c._lock = st.lock;
  c._sleepingCount = st.s;
  c._wokenCount = st.w;
  c._waitSemaphore = st.ws;
  c._ownsLock = false; // only the creator closes what it made
  return c;
});

// ---------------------------------------------------------------------------
// Event

class EventImpl {
  /** @internal */ _cond: ConditionImpl;
  /** @internal */ _flag: SemaphoreImpl;

  constructor(options: SyncObjectOptions = {}) {
    this._cond = new ConditionImpl(new LockImpl(options), options);
    this._flag = new SemaphoreImpl(0, options);
  }

  /** Whether the flag is up, leaving it as it is (call with the condition's lock held). */
  private flagUp(): boolean {
    if (!this._flag.acquireSync(false)) return false;
    this._flag.release();
    return true;
  }

  isSet(): boolean {
    this._cond.acquireSync();
    try {
      return this.flagUp();
    } finally {
      this._cond.release();
    }
  }

  set(): void {
    this._cond.acquireSync();
    try {
      this._flag.acquireSync(false);
      this._flag.release();
      this._cond.notifyAll();
    } finally {
      this._cond.release();
    }
  }

  clear(): void {
    this._cond.acquireSync();
    try {
      this._flag.acquireSync(false);
    } finally {
      this._cond.release();
    }
  }

  /** Resolves true once set, false after the timeout. */
  async wait(timeout?: number | null, options: WaitOptions = {}): Promise<boolean> {
    const t = checkTimeout(timeout);
    checkSignal(options.signal);
    if (!this._cond.acquireSync(false)) await this._cond.acquire({ signal: options.signal });
    try {
      if (!this.flagUp()) await this._cond.wait(t, options);
      return this.flagUp();
    } finally {
      this._cond.release();
    }
  }

  waitSync(timeout?: number | null): boolean {
    const t = checkTimeout(timeout);
    this._cond.acquireSync();
    try {
      if (!this.flagUp()) this._cond.waitSync(t);
      return this.flagUp();
    } finally {
      this._cond.release();
    }
  }

  close(): void {
    this._cond.close();
    this._cond._lock.close();
    this._flag.close();
  }
  [Symbol.dispose](): void {
    this.close();
  }

  [kReduce](ctx: ReduceContext): Reduced {
    if (ctx.method === 'connection') this._flag._reduceState(ctx, 'Event');
    return { type: 'mp.Event', state: { cond: this._cond, flag: this._flag } };
  }

  toString(): string {
    let s = 'unknown';
    try {
      s = this.isSet() ? 'set' : 'unset';
    } catch {
      /* closed */
    }
    return `<Event(${s})>`;
  }
}
Object.defineProperty(EventImpl, 'name', { value: 'Event' });

registerRebuilder('mp.Event', (st: { cond: ConditionImpl; flag: SemaphoreImpl }) => {
  const e = Object.create(EventImpl.prototype) as EventImpl;
  e._cond = st.cond;
  e._flag = st.flag;
  return e;
});

// ---------------------------------------------------------------------------
// Barrier (threading.Barrier's algorithm; its shared state, `state` and `count`,
// is kept in two semaphores' values, read and written under the Condition's lock)

export interface BarrierOptions extends SyncObjectOptions {
  /** Called by one of the waiting processes (the last to arrive) when the barrier trips. */
  action?: (() => unknown) | null;
  /** Default timeout of wait(), in ms. */
  timeout?: number | null;
}

const FILLING = 0;
const DRAINING = 1;
const RESETTING = -1;
const BROKEN = -2;

function setRegister(sem: SemaphoreImpl, value: number): void {
  let cur = sem._getValue();
  while (cur < value) {
    sem.release();
    cur++;
  }
  while (cur > value) {
    if (!sem.acquireSync(false)) break;
    cur--;
  }
}

/** Resolves a function sent by reference or by source, synchronously when possible. */
function resolveFunctionSync(ref: FunctionRef): Function | null {
  if (ref.kind === 'cjs') {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const exp = require(ref.path);
    const fn = ref.exportName === null ? exp : exp[ref.exportName];
    return typeof fn === 'function' ? fn : null;
  }
  if (ref.kind === 'source') return functionFromSource(ref);
  return null;
}

class BarrierImpl {
  /** @internal */ _parties: number;
  /** @internal */ _action: (() => unknown) | null;
  /** @internal */ _actionRef: FunctionRef | null;
  /** @internal */ _actionCaller: CallerUrl | null;
  /** @internal */ _timeout: number | null;
  /** @internal */ _cond: ConditionImpl;
  /** @internal */ _stateSem: SemaphoreImpl;
  /** @internal */ _countSem: SemaphoreImpl;

  constructor(parties: number, options: BarrierOptions = {}) {
    if (typeof parties !== 'number' || !Number.isInteger(parties)) throw new TypeError('parties must be an integer');
    if (parties < 1) throw new RangeError('parties must be >= 1');
    if (options.action !== undefined && options.action !== null && typeof options.action !== 'function') {
      throw new TypeError('action must be a function');
    }
    this._parties = parties;
    this._action = options.action ?? null;
    this._actionRef = null;
    this._actionCaller = this._action ? captureCallerUrl() : null;
    this._timeout = checkTimeout(options.timeout);
    // A plain Lock (Python uses an RLock): ownership is per process here, so a Lock
    // keeps two async waits of one process from both entering the critical section.
    this._cond = new ConditionImpl(new LockImpl(options), options);
    this._cond._ownsLock = true;
    this._stateSem = new SemaphoreImpl(FILLING + 2, options);
    this._countSem = new SemaphoreImpl(0, options);
  }

  private get _state(): number {
    return this._stateSem._getValue() - 2;
  }
  private set _state(v: number) {
    setRegister(this._stateSem, v + 2);
  }
  private get _count(): number {
    return this._countSem._getValue();
  }
  private set _count(v: number) {
    setRegister(this._countSem, v);
  }

  get parties(): number {
    return this._parties;
  }

  /** How many are waiting at the barrier now. */
  get nWaiting(): number {
    return this._locked(() => (this._state === FILLING ? this._count : 0));
  }

  get broken(): boolean {
    return this._locked(() => this._state === BROKEN);
  }

  private _locked<T>(fn: () => T): T {
    this._cond.acquireSync();
    try {
      return fn();
    } finally {
      this._cond.release();
    }
  }

  private _actionFn(): (() => unknown) | null {
    if (this._action) return this._action;
    if (!this._actionRef) return null;
    const fn = resolveFunctionSync(this._actionRef);
    if (!fn) throw new Error('the Barrier action is an ES module function: use wait() rather than waitSync() in this process');
    this._action = fn as () => unknown;
    return this._action;
  }

  private async _actionFnAsync(): Promise<(() => unknown) | null> {
    if (this._action || !this._actionRef) return this._action;
    this._action = (await resolveFunction(this._actionRef, 'the Barrier action')) as () => unknown;
    return this._action;
  }

  /** Waits until `parties` processes have called wait(); resolves this caller's index (0..parties-1). */
  async wait(timeout?: number | null, options: WaitOptions = {}): Promise<number> {
    const t = timeout === undefined ? this._timeout : checkTimeout(timeout);
    checkSignal(options.signal);
    // Resolved before taking the lock: nothing below awaits while holding it, except
    // Condition.wait(), which releases it.
    const action = await this._actionFnAsync();
    if (!this._cond.acquireSync(false)) await this._cond.acquire({ signal: options.signal });
    try {
      while (this._state === DRAINING || this._state === RESETTING) await this._cond.wait(null, options);
      if (this._state < 0) throw new BrokenBarrierError();
      const index = this._count;
      this._count = index + 1;
      try {
        if (index + 1 === this._parties) {
          try {
            if (action) action(); // synchronous, as Python's (a returned Promise is not awaited)
            this._state = DRAINING;
            this._cond.notifyAll();
          } catch (e) {
            this._break();
            throw e;
          }
        } else {
          let ok: boolean;
          try {
            ok = Boolean(await this._cond.waitFor(() => this._state !== FILLING, t, options));
          } catch (e) {
            this._break(); // an aborted wait breaks the barrier, as a timeout does
            throw e;
          }
          if (!ok) {
            this._break();
            throw new BrokenBarrierError();
          }
          if (this._state < 0) throw new BrokenBarrierError();
        }
        return index;
      } finally {
        this._count = this._count - 1;
        this._exit();
      }
    } finally {
      this._cond.release();
    }
  }

  waitSync(timeout?: number | null): number {
    const t = timeout === undefined ? this._timeout : checkTimeout(timeout);
    this._cond.acquireSync();
    try {
      while (this._state === DRAINING || this._state === RESETTING) this._cond.waitSync();
      if (this._state < 0) throw new BrokenBarrierError();
      const index = this._count;
      this._count = index + 1;
      try {
        if (index + 1 === this._parties) {
          try {
            const action = this._actionFn();
            if (action) action();
            this._state = DRAINING;
            this._cond.notifyAll();
          } catch (e) {
            this._break();
            throw e;
          }
        } else {
          if (!this._cond.waitForSync(() => this._state !== FILLING, t)) {
            this._break();
            throw new BrokenBarrierError();
          }
          if (this._state < 0) throw new BrokenBarrierError();
        }
        return index;
      } finally {
        this._count = this._count - 1;
        this._exit();
      }
    } finally {
      this._cond.release();
    }
  }

  private _exit(): void {
    if (this._count === 0 && (this._state === RESETTING || this._state === DRAINING)) {
      this._state = FILLING;
      this._cond.notifyAll();
    }
  }

  private _break(): void {
    this._state = BROKEN;
    this._cond.notifyAll();
  }

  /** Returns the barrier to its empty state; processes waiting get BrokenBarrierError. */
  reset(): void {
    this._locked(() => {
      if (this._count > 0) {
        if (this._state === FILLING || this._state === BROKEN) this._state = RESETTING;
      } else {
        this._state = FILLING;
      }
      this._cond.notifyAll();
    });
  }

  /** Puts the barrier into the broken state: current and future wait()s fail with BrokenBarrierError. */
  abort(): void {
    this._locked(() => this._break());
  }

  close(): void {
    this._cond.close();
    this._stateSem.close();
    this._countSem.close();
  }
  [Symbol.dispose](): void {
    this.close();
  }

  [kReduce](ctx: ReduceContext): Reduced {
    if (ctx.method === 'connection') this._stateSem._reduceState(ctx, 'Barrier');
    let action: FunctionRef | null = this._actionRef;
    if (this._action && !action) action = describeFunction(this._action, 'the Barrier action', this._actionCaller);
    return {
      type: 'mp.Barrier',
      state: { parties: this._parties, action, timeout: this._timeout, cond: this._cond, st: this._stateSem, ct: this._countSem },
    };
  }

  toString(): string {
    return `<Barrier(parties=${this._parties})>`;
  }
}
Object.defineProperty(BarrierImpl, 'name', { value: 'Barrier' });

registerRebuilder('mp.Barrier', (st: { parties: number; action: FunctionRef | null; timeout: number | null; cond: ConditionImpl; st: SemaphoreImpl; ct: SemaphoreImpl }) => {
  const b = Object.create(BarrierImpl.prototype) as BarrierImpl;
  b._parties = st.parties;
  b._action = null;
  b._actionRef = st.action;
  b._actionCaller = null;
  b._timeout = st.timeout;
  b._cond = st.cond;
  b._stateSem = st.st;
  b._countSem = st.ct;
  return b;
});

// ---------------------------------------------------------------------------
// Exports: classes that also work without `new` (as Python's factories).

export const Lock = callable(LockImpl);
export type Lock = LockImpl;
export const RLock = callable(RLockImpl);
export type RLock = RLockImpl;
export const Semaphore = callable(SemaphoreImpl);
export type Semaphore = SemaphoreImpl;
export const BoundedSemaphore = callable(BoundedSemaphoreImpl);
export type BoundedSemaphore = BoundedSemaphoreImpl;
export const Condition = callable(ConditionImpl);
export type Condition = ConditionImpl;
export const Event = callable(EventImpl);
export type Event = EventImpl;
export const Barrier = callable(BarrierImpl);
export type Barrier = BarrierImpl;

// Context factories: ctx.Lock() etc. create objects bound to that context (a 'fork'
// context unlinks semaphore names at once, as Python does).
declare module './context' {
  interface BaseContext {
    Lock: typeof Lock;
    RLock: typeof RLock;
    Semaphore: typeof Semaphore;
    BoundedSemaphore: typeof BoundedSemaphore;
    Condition: typeof Condition;
    Event: typeof Event;
    Barrier: typeof Barrier;
  }
}

const contextFactories = new WeakMap<BaseContext, Map<string, unknown>>();

function defineFactory(name: string, make: (ctx: BaseContext) => Function): void {
  Object.defineProperty(BaseContext.prototype, name, {
    configurable: true,
    get(this: BaseContext) {
      let m = contextFactories.get(this);
      if (!m) contextFactories.set(this, (m = new Map()));
      let f = m.get(name);
      if (!f) {
        f = callable(make(this) as new (...args: any[]) => any);
        m.set(name, f);
      }
      return f;
    },
  });
}

defineFactory('Lock', (ctx) => class Lock extends LockImpl {
  constructor(options: SyncObjectOptions = {}) {
    super({ context: ctx, ...options });
  }
});
defineFactory('RLock', (ctx) => class RLock extends RLockImpl {
  constructor(options: SyncObjectOptions = {}) {
    super({ context: ctx, ...options });
  }
});
defineFactory('Semaphore', (ctx) => class Semaphore extends SemaphoreImpl {
  constructor(value = 1, options: SyncObjectOptions = {}) {
    super(value, { context: ctx, ...options });
  }
});
defineFactory('BoundedSemaphore', (ctx) => class BoundedSemaphore extends BoundedSemaphoreImpl {
  constructor(value = 1, options: SyncObjectOptions = {}) {
    super(value, { context: ctx, ...options });
  }
});
defineFactory('Condition', (ctx) => class Condition extends ConditionImpl {
  constructor(lock?: LockImpl | RLockImpl | null, options: SyncObjectOptions = {}) {
    super(lock, { context: ctx, ...options });
  }
});
defineFactory('Event', (ctx) => class Event extends EventImpl {
  constructor(options: SyncObjectOptions = {}) {
    super({ context: ctx, ...options });
  }
});
defineFactory('Barrier', (ctx) => class Barrier extends BarrierImpl {
  constructor(parties: number, options: BarrierOptions = {}) {
    super(parties, { context: ctx, ...options });
  }
});
