// Start methods and contexts (Python's context.py). A context fixes how children
// start; the library's default context follows setStartMethod().
import * as os from 'node:os';
import { ensureForkSupport } from './native';
import { forkServer } from './forkserver';
import { forkUnavailableReason, PopenFork } from './popen_fork';
import { PopenForkserver } from './popen_forkserver';
import { PopenSpawn, setExecutable as setSpawnExecutable } from './popen_spawn';
import {
  activeChildren, currentProcess, libraryProcessClasses, parentProcess, Process, setDefaultContextGetter,
  type Popen, type ProcessOptions,
} from './process';
import type { StartMethod } from './reduction';
import { isSingleThreaded } from './util';

export type { StartMethod };

/** Makes a class callable without `new` too (API.md: factories work with and without new). */
export function callable<T extends abstract new (...args: any[]) => any>(cls: T): T & ((...args: ConstructorParameters<T>) => InstanceType<T>) {
  return new Proxy(cls, {
    apply: (target, _this, args) => Reflect.construct(target, args),
  }) as T & ((...args: ConstructorParameters<T>) => InstanceType<T>);
}

function forkserverUnavailableReason(): string | null {
  if (process.platform === 'win32') return "the 'forkserver' start method does not exist on Windows";
  const why = ensureForkSupport();
  return why ? `the 'forkserver' start method is unavailable: ${why}` : null;
}

function unavailableReason(method: StartMethod): string | null {
  switch (method) {
    case 'fork':
      return forkUnavailableReason();
    case 'forkserver':
      return forkserverUnavailableReason();
    case 'spawn':
      return null;
    default:
      return `unknown start method ${JSON.stringify(method)}: use 'forkserver', 'spawn' or 'fork'`;
  }
}

export class BaseContext {
  /** Process bound to this context: `new ctx.Process({...})` or a subclass of it. */
  readonly Process: typeof Process;

  constructor(private readonly method: StartMethod | null) {
    const ctx = this;
    class ContextProcess<A extends unknown[] = unknown[]> extends Process<A> {
      constructor(options: ProcessOptions<A> = {}) {
        super({ context: ctx, ...options });
      }
    }
    Object.defineProperty(ContextProcess, 'name', { value: 'Process' });
    libraryProcessClasses.add(ContextProcess);
    this.Process = callable(ContextProcess) as unknown as typeof Process;
  }

  /** @internal This context's own start method; null for the default context (it follows setStartMethod). */
  get _fixedMethod(): StartMethod | null {
    return this.method;
  }

  /** This context's start method (the default context: the one in force). */
  getStartMethod(): StartMethod {
    return this.method ?? defaultMethod();
  }

  /** @internal Starts `proc` with this context's method. */
  _popen(proc: Process): Popen {
    const method = this.getStartMethod();
    const why = unavailableReason(method);
    if (why) throw new Error(why);
    switch (method) {
      case 'fork':
        return new PopenFork(proc);
      case 'forkserver':
        return new PopenForkserver(proc);
      case 'spawn':
        return new PopenSpawn(proc);
    }
  }

  getContext(method?: StartMethod | null): BaseContext {
    return getContext(method);
  }
  getAllStartMethods(): StartMethod[] {
    return getAllStartMethods();
  }
  setForkserverPreload(modules: string[]): void {
    forkServer.setPreload(modules);
  }
  setExecutable(path: string): void {
    setSpawnExecutable(path);
  }
  currentProcess(): Process {
    return currentProcess();
  }
  parentProcess() {
    return parentProcess();
  }
  activeChildren(): Process[] {
    return activeChildren();
  }
  cpuCount(): number {
    return cpuCount();
  }
}

const contexts = new Map<StartMethod, BaseContext>();
let chosenMethod: StartMethod | null = null;

function defaultMethod(): StartMethod {
  if (chosenMethod) return chosenMethod;
  return forkserverUnavailableReason() === null ? 'forkserver' : 'spawn';
}

export const defaultContext = new BaseContext(null);
libraryProcessClasses.add(Process);
setDefaultContextGetter(() => defaultContext);

/** The context of `method` (default: the library's default context). */
export function getContext(method?: StartMethod | null): BaseContext {
  if (method === undefined || method === null) return defaultContext;
  const why = unavailableReason(method);
  if (why) throw new Error(why);
  let ctx = contexts.get(method);
  if (!ctx) {
    ctx = new BaseContext(method);
    contexts.set(method, ctx);
  }
  return ctx;
}

export function setStartMethod(method: StartMethod | null, options: { force?: boolean } = {}): void {
  if (chosenMethod !== null && !options.force) {
    throw new Error(`the start method is already set to '${chosenMethod}'; pass { force: true } to change it`);
  }
  if (method === null) {
    chosenMethod = null;
    return;
  }
  const why = unavailableReason(method);
  if (why) throw new Error(why);
  chosenMethod = method;
}

export function getStartMethod(allowNone = false): StartMethod | null {
  if (chosenMethod === null && allowNone) return null;
  return defaultMethod();
}

/** The start methods usable in this process, default first. */
export function getAllStartMethods(): StartMethod[] {
  if (process.platform === 'win32') return ['spawn'];
  const methods: StartMethod[] = [];
  if (forkserverUnavailableReason() === null) methods.push('forkserver');
  methods.push('spawn');
  if (isSingleThreaded() && forkUnavailableReason() === null) methods.push('fork');
  return methods;
}

export function cpuCount(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}
