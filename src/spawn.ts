// Starting a child's life: what travels to it (LaunchData) and how it runs its target
// and exits, for each start method (Python's spawn.py and Process._bootstrap).
import * as async_hooks from 'node:async_hooks';
import * as v8 from 'node:v8';
import { native } from './native';
import {
  becomeChild, currentProcess, kState, libraryProcessClasses, ParentProcess, Process, setImportingTargetModule,
} from './process';
import { describeFunction, dumps, FunctionRef, loads, resolveFunction, StartMethod } from './reduction';
import { afterForkHooksNeeded, debug, registerAfterFork, runAfterForkHooks, type Hook as AfterForkHook } from './util';

export interface LaunchData {
  name: string;
  daemon: boolean;
  authkey: Buffer;
  identity: number[];
  parentPid: number;
  parentName: string;
  targetRef: FunctionRef | null;
  classRef: FunctionRef | null;
  /** dumps({ args, props }): the target's args and a subclass's own properties. */
  data: Buffer;
  method: StartMethod;
  /** The parent's environment, as environBlock() gives it. */
  env: string;
  cwd: string;
  /** The parent's process.argv: the child sees its arguments (as Python's spawn sets sys.argv). */
  argv: string[];
  /** Index in the fds that arrived of the parent's lifeline (EOF when the parent dies). */
  aliveFd: number;
  /** The forkserver this process tree uses, so children reuse it. */
  forkserver: { address: string; authkey: Buffer } | null;
}

/** Builds what a spawn/forkserver child needs; fds of args are appended to `fds`. */
export function prepareLaunch(proc: Process, method: StartMethod, fds: number[], aliveFd: number,
                              forkserver: LaunchData['forkserver']): LaunchData {
  const st = proc[kState];
  const ctor = proc.constructor;
  const isUserClass = !libraryProcessClasses.has(ctor);
  const targetRef = st.target ? describeFunction(st.target, `the target of ${proc.name}`, st.callerUrl) : null;
  const classRef = isUserClass ? describeFunction(ctor, `the Process subclass ${ctor.name}`, st.callerUrl) : null;
  const props: Record<string, unknown> = {};
  for (const k of Object.keys(proc)) props[k] = (proc as unknown as Record<string, unknown>)[k];
  const data = dumps({ args: st.args, props }, method, fds, `the arguments of ${proc.name}`);
  return {
    name: proc.name,
    daemon: st.daemon,
    authkey: st.authkey,
    identity: st.identity,
    parentPid: native.getpid(),
    parentName: currentProcess().name,
    targetRef,
    classRef,
    data,
    method,
    env: environBlock(),
    cwd: process.cwd(),
    argv: [...process.argv],
    aliveFd,
    forkserver,
  };
}

export function encodeLaunch(launch: LaunchData): Buffer {
  return v8.serialize(launch);
}

export function decodeLaunch(buf: Buffer): LaunchData {
  return v8.deserialize(buf) as LaunchData;
}

/** Fds this process holds only so its parent sees it die: never inherited further. */
const lifelineFds: number[] = [];
export function addLifelineFd(fd: number): void {
  native.setCloexec(fd, true);
  lifelineFds.push(fd);
}
registerAfterFork(() => {
  for (const fd of lifelineFds.splice(0)) {
    try {
      native.close(fd);
    } catch {
      /* gone */
    }
  }
}, () => lifelineFds.length > 0);

let forkserverOfTree: LaunchData['forkserver'] = null;
export function inheritedForkserver(): LaunchData['forkserver'] {
  return forkserverOfTree;
}

/**
 * The environment as one string of "K=V" entries joined by NUL: on the main thread one
 * native read of the C environment, which is what process.env reads and writes there (a
 * copy of process.env costs one native call per key, ~0.1-0.5 ms per launch). Not when
 * process.env was replaced by a plain object (test runners do): the object is what counts.
 */
function environBlock(): string {
  const fromC = envIsNodes() ? native.environBlock?.() : null;
  return fromC ?? Object.entries(process.env).map(([k, v]) => `${k}=${v}`).join('\0');
}

let probedEnv: object | null = null;
let probedIsNodes = false;

/** Whether process.env is Node's own (which stores every value as a string), probed once per object. */
function envIsNodes(): boolean {
  const env = process.env;
  if (env !== probedEnv) {
    probedEnv = env;
    const key = '__node_multiprocessing_env_probe__';
    if (Object.prototype.hasOwnProperty.call(env, key)) {
      probedIsNodes = false;
    } else {
      try {
        (env as Record<string, unknown>)[key] = 0;
        probedIsNodes = typeof env[key] === 'string';
      } finally {
        delete env[key];
      }
    }
  }
  return probedIsNodes;
}

function parseEnvironBlock(block: string): Map<string, string> {
  const entries = new Map<string, string>();
  for (const entry of block.split('\0')) {
    const eq = entry.indexOf('=', 1); // from 1: Windows has names such as "=C:"
    if (eq > 0) entries.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return entries;
}

/** This process's environment taken in advance (a forkserver spare, while it waits). */
let envSnapshot: string | null = null;

function applyEnvironment(launch: LaunchData): void {
  const current = envSnapshot ?? environBlock();
  envSnapshot = null;
  if (current !== launch.env) {
    const have = parseEnvironBlock(current);
    const want = parseEnvironBlock(launch.env);
    for (const k of have.keys()) if (!want.has(k)) delete process.env[k];
    for (const [k, v] of want) if (have.get(k) !== v) process.env[k] = v;
  }
  if (process.cwd() !== launch.cwd) process.chdir(launch.cwd);
  // The parent's arguments; argv[1] stays this child's entry, so that the ES module main
  // guard `import.meta.url === pathToFileURL(process.argv[1]).href` stays false here when
  // the child imports the parent's main module to find its target.
  process.argv = [process.argv[0], process.argv[1], ...launch.argv.slice(2)];
}

function describeError(e: unknown): string {
  if (e instanceof Error) return e.stack ?? `${e.name}: ${e.message}`;
  return `uncaught value: ${String(e)}`;
}

function reportFailure(name: string, e: unknown): void {
  process.stderr.write(`Process ${name}:\n${describeError(e)}\n`);
}

/** Builds the Process object of a spawn/forkserver child from its LaunchData. */
async function rebuildProcess(launch: LaunchData, fds: readonly number[]): Promise<Process> {
  const aliveFd = launch.aliveFd >= 0 ? fds[launch.aliveFd] : -1;
  const parentInfo = new ParentProcess(launch.parentPid, launch.parentName, aliveFd);
  forkserverOfTree = launch.forkserver;
  let target: Function | null = null;
  let cls: Function = Process;
  const importing = launch.targetRef ?? launch.classRef;
  setImportingTargetModule(importing && importing.kind !== 'source' ? (importing.kind === 'cjs' ? importing.path : importing.url) : null);
  try {
    if (launch.classRef) cls = await resolveFunction(launch.classRef, `the Process subclass of ${launch.name}`);
    if (launch.targetRef) target = await resolveFunction(launch.targetRef, `the target of ${launch.name}`);
  } finally {
    setImportingTargetModule(null);
  }
  const { args, props } = loads(launch.data, launch.method, fds) as { args: unknown[]; props: Record<string, unknown> };
  const proc = Object.create(cls.prototype) as Process;
  (proc as { [kState]: Process[typeof kState] })[kState] = {
    target,
    args,
    name: launch.name,
    daemon: launch.daemon,
    identity: launch.identity,
    authkey: launch.authkey,
    parentPid: launch.parentPid,
    context: null,
    callerUrl: null,
    popen: null,
    closed: false,
    childCounter: 0,
    selfPid: null,
  };
  Object.assign(proc, props);
  becomeChild(proc, parentInfo);
  if (launch.daemon && aliveFd >= 0) native.watchParentDeath(aliveFd);
  return proc;
}

/** Runs the process's run(); returns its exit code (1 and a report on stderr if it threw). */
async function runBody(proc: Process): Promise<number> {
  try {
    await proc.run();
    return 0;
  } catch (e) {
    reportFailure(proc.name, e);
    return 1;
  }
}

// ---------------------------------------------------------------------------
// Exits

/** Leaves the child: 'exit' listeners run, then (forked) _exit through reallyExit. */
function exitProcess(code: number): never {
  // A clean end leaves process.exitCode as a natural exit does: the setter that
  // process.exit(0) runs costs a forked child ~0.15 ms of first-touch page faults.
  if (code === 0 && !process.exitCode) process.exit();
  process.exit(code);
}

/** This process's pid, which process.pid reports once usePidAccessors() ran. */
let ownPid = 0;
let pidAccessors = false;

/**
 * Makes process.pid and process.ppid getters, once, in a process that forks (before its
 * first fork): its forked children then only set ownPid (redefining process.pid there, on
 * Node's dictionary-mode process object, cost each child ~0.1 ms). ppid reads getppid()
 * each time, as Python's os.getppid() does: a child sees its parent die.
 */
export function usePidAccessors(): void {
  if (pidAccessors) return;
  ownPid = native.getpid();
  Object.defineProperty(process, 'pid', { get: () => ownPid, configurable: true, enumerable: true });
  Object.defineProperty(process, 'ppid', { get: () => native.getppid(), configurable: true, enumerable: true });
  pidAccessors = true;
}

/**
 * Makes a forked copy of Node safe to run JS in: fresh pids, exit through _exit, the
 * after-fork hooks (those the parent found needed, or all).
 */
export function prepareForkedProcess(hooks: readonly AfterForkHook[] | null = null): void {
  if (pidAccessors) ownPid = native.getpid();
  else usePidAccessors();
  // process.exit() ends in process.reallyExit(); Node's own teardown crashes in a fork.
  (process as unknown as { reallyExit(code: number): void }).reallyExit = (code: number) => native.exitNow(code);
  runAfterForkHooks(hooks);
}

/** Inherited listeners belong to the parent's program; a child starts without them. */
const inheritedEvents = ['exit', 'beforeExit', 'uncaughtException', 'unhandledRejection', 'uncaughtExceptionMonitor',
  'SIGINT', 'SIGTERM', 'SIGHUP', 'SIGCHLD', 'SIGUSR2', 'SIGPIPE', 'SIGWINCH', 'message', 'disconnect'] as const;

/** The events of inheritedEvents that have listeners in this process. */
function listenedEvents(): string[] {
  const events = (process as unknown as { _events?: Record<string, unknown> })._events;
  return inheritedEvents.filter((ev) => events?.[ev] !== undefined);
}

function dropInheritedListeners(listened: readonly string[] = listenedEvents()): void {
  for (const ev of listened) process.removeAllListeners(ev);
}

function installFailureHandlers(exit: (code: number) => void): void {
  process.on('uncaughtException', (e) => {
    reportFailure(currentProcess().name, e);
    exit(1);
  });
}

// ---------------------------------------------------------------------------
// A forked child (fork or forkserver) continues inside the call that forked, deep
// in the parent's stack. It must never return there, nor to Node's own loop, whose
// NodePlatform::DrainTasks would wait for ever on platform tasks that were in flight
// at the fork (the parked ones among them). So it runs its own event loop, one
// uv_run(UV_RUN_ONCE) at a time, and leaves through _exit.

/**
 * Promises are not resources that keep a child alive: where Node can (the 24 and 26 lines
 * here), the hook asks for no promise hooks at all, which an init hook otherwise turns on
 * for every promise the child makes (older Node ignores the option).
 */
const NO_PROMISE_HOOKS = { trackPromises: false };

type Resource = { hasRef?: () => boolean; _destroyed?: boolean };
/** Stands for a resource that is not an object: pending until its callback ran. */
const OPAQUE: Resource = {};
const OPAQUE_RESOURCE = { deref: (): Resource => OPAQUE };
/** Collected (closed, finished), or a Timeout or Immediate that ran. */
const finished = (r: Resource | undefined): boolean => r === undefined || r._destroyed === true;

/** What a 'fork' child tracks: resources it created itself (see createResourceTracker). */
interface ResourceTracker {
  hook: async_hooks.AsyncHook;
  /** Whether the child still has work of its own (a ref'ed handle, a pending timer or request). */
  ownWork: () => boolean;
  /** Forgets everything seen (the parent's copy, after the fork). */
  clear: () => void;
}

/**
 * Resources (timers, sockets, requests) the child creates after the fork, held weakly: an
 * open handle, a pending timer or request is held by Node itself, so an entry whose
 * resource was collected is finished. There is no destroy hook: on Node without
 * trackPromises it makes Node watch every promise's collection (a weak callback each),
 * and 200,000 awaits in a child took 240 ms instead of 110 ms (26 ms with no hook).
 */
function createResourceTracker(): ResourceTracker {
  const live = new Map<number, { deref(): Resource | undefined }>();
  const ignored = new Set(['PROMISE', 'TickObject', 'Microtask', 'ELDHISTOGRAM']);
  let pruneAt = 1024;
  const prune = (): void => {
    for (const [id, ref] of live) if (finished(ref.deref())) live.delete(id);
    pruneAt = Math.max(1024, 2 * live.size);
  };
  const hook = async_hooks.createHook({
    init(id, type, _trigger, resource) {
      if (ignored.has(type)) return;
      live.set(id, typeof resource === 'object' && resource !== null ? new WeakRef(resource as Resource) : OPAQUE_RESOURCE);
      if (live.size >= pruneAt) prune();
    },
    // A request (no hasRef: crypto, fs, dns jobs...) is done once its callback ran.
    after(id) {
      const r = live.get(id)?.deref();
      if (r !== undefined && typeof r.hasRef !== 'function') live.delete(id);
    },
    ...NO_PROMISE_HOOKS,
  } as async_hooks.HookCallbacks);
  const types = new Map<number, string>();
  const ownWork = (): boolean => {
    for (const [id, ref] of live) {
      const r = ref.deref();
      if (finished(r)) {
        live.delete(id);
        continue;
      }
      // Handles report hasRef() false once closed.
      const hasRef = r!.hasRef;
      if (typeof hasRef !== 'function' || hasRef.call(r)) {
        if (!types.has(id)) {
          types.set(id, (r as object).constructor?.name ?? typeof r);
          debug(`forked child: waits for its own ${types.get(id)} (async id ${id})`);
        }
        return true;
      }
    }
    return false;
  };
  return { hook, ownWork, clear: () => { live.clear(); types.clear(); } };
}

/** What a 'fork' child needs before its target, made in the parent (forkedChildKit()). */
export interface ForkedChildKit {
  parentInfo: ParentProcess;
  tracker: ResourceTracker;
  /** Events the child must drop its inherited listeners of (looked up here, not there). */
  listened: string[];
  /** The after-fork hooks the child must run (asked here, not there). */
  hooks: AfterForkHook[];
}

let kit: ForkedChildKit | null = null;

/**
 * Call just before fork(), then forkDone() in the parent. A forked child is a cold copy:
 * every page it writes first costs a copy-on-write fault, every function it calls first
 * a few more, so its ParentProcess and resource tracker made there cost it ~0.4 ms of its
 * start (~0.1 ms here, once). The tracker's hook is on only from here to forkDone(): the
 * child starts with it on, and nothing in between makes an async resource in the parent.
 */
export function forkedChildKit(aliveFd: number): ForkedChildKit {
  const name = currentProcess().name;
  const pid = native.getpid();
  if (!kit || kit.parentInfo.pid !== pid || kit.parentInfo.name !== name || kit.parentInfo.sentinel !== aliveFd) {
    kit = { parentInfo: new ParentProcess(pid, name, aliveFd), tracker: kit?.tracker ?? createResourceTracker(), listened: [], hooks: [] };
  }
  kit.listened = listenedEvents();
  kit.hooks = afterForkHooksNeeded();
  kit.tracker.hook.enable();
  return kit;
}

/** In the parent, after fork() returned or failed. */
export function forkDone(used: ForkedChildKit): void {
  used.tracker.hook.disable();
  used.tracker.clear();
}

/**
 * Runs the event loop until `body` has settled and the child has no work of its
 * own left (`ownWork`, or else: nothing keeps the loop alive), then exits.
 */
function driveForkedChild(body: Promise<number>, ownWork: (() => boolean) | null): never {
  let code: number | null = null;
  body.then(
    (c) => { code = c; },
    (e) => { reportFailure(currentProcess().name, e); code = 1; },
  );
  const tick = () => (process as unknown as { _tickCallback(): void })._tickCallback();
  for (;;) {
    tick();
    if (code !== null && (code !== 0 || (ownWork !== null && !ownWork()))) break;
    native.runLoopOnce();
    tick();
    if (!native.loopAlive()) {
      // As Node does when its loop drains: 'beforeExit' may schedule more work.
      process.emit('beforeExit', process.exitCode !== undefined ? Number(process.exitCode) : 0);
      tick();
      if (!native.loopAlive()) break;
    }
  }
  const final = code === null || code === 0 ? (process.exitCode !== undefined ? Number(process.exitCode) : 0) : code;
  exitProcess(final);
}

let childPathWarmed = false;

/**
 * Runs, once, the Node internals a forked child runs first (hooks, listener
 * removal), so their bytecode is compiled here and inherited: compiling them in the
 * child costs it ~1 ms, most of it copy-on-write faults on the heap pages V8 writes.
 * The promise hooks run only with a promise reaction, at this turn's microtask
 * checkpoint: the first child may find that reaction queued and run it too (harmless:
 * it only disables this hook), later children find the hooks compiled (~0.3 ms each).
 */
export function warmForkedChildPath(): void {
  if (childPathWarmed) return;
  childPathWarmed = true;
  usePidAccessors();
  const noop = () => {};
  // The same kinds of callbacks as the child's own hook (createResourceTracker).
  const hook = async_hooks.createHook({ init: noop, after: noop, ...NO_PROMISE_HOOKS } as async_hooks.HookCallbacks);
  hook.enable();
  void Promise.resolve().then(noop).then(() => hook.disable());
  const event = 'node-multiprocessing:warm-up';
  process.on(event, noop);
  process.removeAllListeners(event);
  process.on('uncaughtException', noop);
  process.removeListener('uncaughtException', noop);
}

/** The rest of a 'fork' child's life, from inside the call that forked; never returns. */
export function runForkedChild(proc: Process, childKit: ForkedChildKit, lifelineFd: number): never {
  kit = null;  // this one is in use here: children of this child get their own
  const { parentInfo, tracker, listened, hooks } = childKit;
  prepareForkedProcess(hooks);
  dropInheritedListeners(listened);
  addLifelineFd(lifelineFd);
  becomeChild(proc, parentInfo);
  if (proc.daemon) native.watchParentDeath(parentInfo.sentinel);
  installFailureHandlers(exitProcess);
  // Inherited handles (the parent's servers, timers) must not keep the child alive: only
  // what the tracker saw created since the fork does.
  driveForkedChild(runBody(proc), tracker.ownWork);
}

// ---------------------------------------------------------------------------
// 'forkserver' (forked, but from our own server: nothing of the user's is inherited)
// and 'spawn' (a fresh node, which exits the normal way).

async function launchedBody(launch: LaunchData, fds: readonly number[]): Promise<number> {
  applyEnvironment(launch);
  let proc: Process;
  try {
    proc = await rebuildProcess(launch, fds);
  } catch (e) {
    reportFailure(launch.name, e);
    return 1;
  }
  return runBody(proc);
}

/** What a launched child does before it knows its target (a forkserver spare does it in advance). */
export function prepareLaunchedChild(forked: boolean): void {
  envSnapshot = environBlock();
  if (forked) prepareForkedProcess();
  dropInheritedListeners();
  installFailureHandlers(exitProcess);
}

/** Runs a forked child prepared by prepareLaunchedChild(true); never returns. */
export function runPreparedForkedChild(launch: LaunchData, fds: readonly number[]): never {
  driveForkedChild(launchedBody(launch, fds), null);
}

export function runLaunchedChild(launch: LaunchData, fds: readonly number[], forked: boolean): void {
  prepareLaunchedChild(forked);
  if (forked) runPreparedForkedChild(launch, fds);
  void launchedBody(launch, fds).then((code) => {
    if (code !== 0) exitProcess(code);
  });
}
