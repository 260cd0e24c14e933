// Process objects, the current process and its parent (Python's process.py).
import { ProcessError } from './errors';
import { native } from './native';
import { captureCallerUrl, type CallerUrl } from './reduction';
import { checkTimeout, debug, exitHookPerProcess, lazyCrypto, pollTimeout, signals } from './util';
import type { BaseContext } from './context';

export interface ProcessOptions<A extends unknown[] = unknown[]> {
  /** The function the child runs: exported from a module (sent by reference) or self-contained. */
  target?: ((...args: A) => unknown) | null;
  args?: A;
  name?: string;
  /** A daemonic child is terminated when its parent exits, and cannot have children. */
  daemon?: boolean;
  /** The context (start method) to start with; default: the library's default context. */
  context?: BaseContext;
}

/** The OS side of a started child: one implementation per start method. */
export interface Popen {
  readonly pid: number;
  readonly sentinel: number;
  readonly method: string;
  /** Exit code if the child has exited (non-blocking), else null. */
  poll(): number | null;
  wait(timeoutMs: number | null): Promise<number | null>;
  waitSync(timeoutMs: number | null): number | null;
  sendSignal(signal: number): void;
  close(): void;
}

export const kState = Symbol('node-multiprocessing.processState');

export interface ProcessState {
  target: Function | null;
  args: unknown[];
  name: string | null;
  daemon: boolean;
  identity: number[];
  authkey: Buffer;
  parentPid: number;
  context: BaseContext | null;
  callerUrl: CallerUrl | null;
  popen: Popen | null;
  closed: boolean;
  childCounter: number;
  /** Set in the child itself: its own pid. */
  selfPid: number | null;
}

// Library-defined Process classes (not user subclasses): set by the context module.
export const libraryProcessClasses = new Set<Function>();

let defaultContextGetter: (() => BaseContext) | null = null;
export function setDefaultContextGetter(get: () => BaseContext): void {
  defaultContextGetter = get;
}

/** While a child imports the module of its target: starting processes then is a fork bomb. */
let importingTargetModule: string | null = null;
export function setImportingTargetModule(module: string | null): void {
  importingTargetModule = module;
}

const children = new Set<Process>();

export class Process<A extends unknown[] = unknown[]> {
  readonly [kState]: ProcessState;

  constructor(options: ProcessOptions<A> = {}) {
    if (options === null || typeof options !== 'object') {
      throw new TypeError('new Process(options): options must be an object like { target, args, name, daemon }');
    }
    const { target = null, args = [] as unknown as A, name, daemon, context } = options;
    if (target !== null && typeof target !== 'function') throw new TypeError('target must be a function');
    if (!Array.isArray(args)) throw new TypeError('args must be an array');
    if (name !== undefined && typeof name !== 'string') throw new TypeError('name must be a string');
    const parent = currentProcess();
    const pstate = parent[kState];
    const identity = [...pstate.identity, ++pstate.childCounter];
    this[kState] = {
      target,
      args: [...args],
      name: name ?? null,
      daemon: daemon ?? parent.daemon,
      identity,
      authkey: pstate.authkey,
      parentPid: native.getpid(),
      context: context ?? null,
      // Where the caller is, for sending the target by reference; a 'fork' child needs none.
      callerUrl: context?._fixedMethod === 'fork' ? null : captureCallerUrl(),
      popen: null,
      closed: false,
      childCounter: 0,
      selfPid: null,
    };
  }

  /** What the child runs. Override in a subclass, or pass `target`. */
  run(): unknown {
    const { target, args } = this[kState];
    if (target) return target(...args);
    return undefined;
  }

  start(): void {
    const st = this[kState];
    this.checkClosed();
    if (st.popen) throw new Error('cannot start a process twice');
    if (st.parentPid !== native.getpid()) throw new Error('can only start a process object created by the current process');
    if (currentProcess().daemon) throw new Error('daemonic processes are not allowed to have children');
    if (importingTargetModule !== null) {
      throw new Error(
        `Process.start() was called while this child process was importing ${importingTargetModule} to find its target, ` +
          'which would start processes without end. Put the code that starts processes behind a main-module guard: ' +
          '`if (require.main === module) { ... }` (CommonJS) or `if (import.meta.main) { ... }` (ESM).',
      );
    }
    cleanupChildren();
    const ctx = st.context ?? defaultContextGetter!();
    st.popen = ctx._popen(this);
    st.callerUrl = null;  // used by _popen only; its captured stack may hold on to the caller's objects
    children.add(this);
    installExitHook();
    debug(`started ${this.name} pid ${st.popen.pid} (${st.popen.method})`);
  }

  /** Waits until the child exits, or `timeout` ms pass (then the child may still run). */
  async join(timeout?: number | null): Promise<void> {
    const popen = this.checkJoinable(timeout);
    const code = await popen.wait(checkTimeout(timeout));
    if (code !== null) children.delete(this);
  }

  joinSync(timeout?: number | null): void {
    const popen = this.checkJoinable(timeout);
    const code = popen.waitSync(checkTimeout(timeout));
    if (code !== null) children.delete(this);
  }

  isAlive(): boolean {
    this.checkClosed();
    if (this === (currentProcess() as Process)) return true;
    const popen = this[kState].popen;
    if (!popen) return false;
    if (popen.poll() === null) return true;
    children.delete(this);
    return false;
  }

  /** SIGTERM: exitCode becomes -15 unless the child handles it. */
  terminate(): void {
    this.signal(signals.SIGTERM);
  }

  /** SIGKILL: exitCode becomes -9. */
  kill(): void {
    this.signal(signals.SIGKILL);
  }

  /** SIGINT, as Ctrl-C would send. */
  interrupt(): void {
    this.signal(signals.SIGINT);
  }

  /** Releases the OS resources of a finished process; most properties then throw. */
  close(): void {
    const st = this[kState];
    if (st.closed) return;
    if (st.popen) {
      if (st.popen.poll() === null) {
        throw new Error('cannot close a process while it is still running; join() or terminate() it first');
      }
      st.popen.close();
      st.popen = null;
      children.delete(this);
    }
    st.closed = true;
  }

  [Symbol.dispose](): void {
    if (this[kState].popen?.poll() === null) {
      this.terminate();
      this.joinSync(5000);
    }
    this.close();
  }

  get name(): string {
    const st = this[kState];
    return st.name ?? `Process-${st.identity.join(':')}`;
  }
  set name(value: string) {
    if (typeof value !== 'string') throw new TypeError('name must be a string');
    this[kState].name = value;
  }

  get daemon(): boolean {
    return this[kState].daemon;
  }
  set daemon(value: boolean) {
    if (this[kState].popen) throw new Error('cannot set daemon: the process has already started');
    this[kState].daemon = Boolean(value);
  }

  get authkey(): Buffer {
    return this[kState].authkey;
  }
  set authkey(value: Buffer) {
    if (!Buffer.isBuffer(value)) throw new TypeError('authkey must be a Buffer');
    this[kState].authkey = Buffer.from(value);
  }

  /** The child's pid: null before start(). */
  get pid(): number | null {
    const st = this[kState];
    if (st.selfPid !== null) return native.getpid();
    return st.popen && st.popen.pid > 0 ? st.popen.pid : null;
  }

  get ident(): number | null {
    return this.pid;
  }

  /** null while running (or before start), 0 on normal end, n for exit(n), -signal if killed. */
  get exitCode(): number | null {
    this.checkClosed();
    const popen = this[kState].popen;
    return popen ? popen.poll() : null;
  }

  /** An fd that becomes readable when the child ends (for connection.wait()). */
  get sentinel(): number {
    this.checkClosed();
    const popen = this[kState].popen;
    if (!popen) throw new Error('process not started');
    return popen.sentinel;
  }

  toString(): string {
    const st = this[kState];
    let status: string;
    if (this === (currentProcess() as Process)) status = 'started';
    else if (st.closed) status = 'closed';
    else if (!st.popen) status = 'initial';
    else {
      const code = st.popen.poll();
      status = code === null ? 'started' : `stopped exitcode=${code}`;
    }
    return `<${this.constructor.name} name='${this.name}' pid=${this.pid ?? 'None'} ${status}${st.daemon ? ' daemon' : ''}>`;
  }

  private signal(sig: number): void {
    this.checkClosed();
    const popen = this[kState].popen;
    if (!popen) throw new Error('process not started');
    popen.sendSignal(sig);
  }

  private checkClosed(): void {
    if (this[kState].closed) throw new Error('process object is closed');
  }

  private checkJoinable(timeout: unknown): Popen {
    this.checkClosed();
    checkTimeout(timeout);
    const st = this[kState];
    if (st.parentPid !== native.getpid()) throw new Error('can only join a child process');
    if (!st.popen) throw new Error('can only join a started process');
    return st.popen;
  }
}

/** The main process as seen from itself (Python's _MainProcess). */
function makeMainProcess(): Process {
  const self = Object.create(Process.prototype) as Process;
  const state = {
    target: null,
    args: [],
    name: 'MainProcess',
    daemon: false,
    identity: [],
    parentPid: native.getppid(),
    context: null,
    callerUrl: null,
    popen: null,
    closed: false,
    childCounter: 0,
    selfPid: native.getpid(),
  } as Omit<ProcessState, 'authkey'> as ProcessState;
  // Made on first use: a spawned child replaces this process object with its own before
  // it needs a key, and node:crypto costs ~10 ms to load.
  let authkey: Buffer | undefined;
  Object.defineProperty(state, 'authkey', {
    get: () => (authkey ??= lazyCrypto().randomBytes(32)),
    set: (key: Buffer) => { authkey = key; },
    enumerable: true,
  });
  (self as { [kState]: ProcessState })[kState] = state;
  return self;
}

/** The parent as seen from a child: its pid, name, and whether it still lives. */
export class ParentProcess {
  constructor(
    readonly pid: number,
    readonly name: string,
    /** Readable (EOF) once the parent has exited. */
    readonly sentinel: number,
  ) {}

  isAlive(): boolean {
    if (this.sentinel < 0) return native.kill(this.pid, 0);
    return native.pollFds([this.sentinel], 0).length === 0;
  }

  joinSync(timeout?: number | null): void {
    if (this.sentinel >= 0) native.pollFds([this.sentinel], pollTimeout(checkTimeout(timeout)));
  }

  get exitCode(): number | null {
    return this.isAlive() ? null : 0;
  }

  toString(): string {
    return `<ParentProcess name='${this.name}' pid=${this.pid}${this.isAlive() ? ' started' : ' stopped'}>`;
  }
}

let current: Process = makeMainProcess();
let parent: ParentProcess | null = null;

export function currentProcess(): Process {
  return current;
}

export function parentProcess(): ParentProcess | null {
  return parent;
}

/** Children started by this process that are still alive (finished ones are reaped). */
export function activeChildren(): Process[] {
  cleanupChildren();
  return [...children];
}

function cleanupChildren(): void {
  for (const p of children) {
    const popen = p[kState].popen;
    if (!popen || popen.poll() !== null) children.delete(p);
  }
}

/** Makes `proc` the current process (in a newly started child). */
export function becomeChild(proc: Process, parentInfo: ParentProcess): void {
  const st = proc[kState];
  st.popen = null;
  st.selfPid = native.getpid();
  st.parentPid = parentInfo.pid;
  st.childCounter = 0;
  current = proc;
  parent = parentInfo;
  children.clear();
}

/** At exit, as Python does: terminate daemonic children, then wait for all children. */
const installExitHook = exitHookPerProcess(() => {
  const alive = activeChildren();
  for (const p of alive) if (p.daemon) {
    try {
      p.terminate();
    } catch {
      /* already gone */
    }
  }
  for (const p of alive) {
    try {
      p.joinSync();
    } catch {
      /* closed meanwhile */
    }
  }
});

export { ProcessError };
