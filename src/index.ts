// node-multiprocessing: Python's multiprocessing for Node.js.
import { endEagerCompile } from './eager_compile';  // first: see there
import { BaseContext, callable, defaultContext } from './context';
import { Process as ProcessClass } from './process';
import { ShareableList, SharedMemory } from './shared_memory';
import { Array as SharedArray, RawArray, RawValue, Value } from './sharedctypes';
import { Pipe as makePipe } from './connection';

export {
  AuthenticationError, BrokenBarrierError, BrokenPoolError, BufferTooShort, Empty, EOFError, Full, ProcessError,
  RemoteError, TimeoutError,
} from './errors';
export { BaseContext, cpuCount, getAllStartMethods, getContext, getStartMethod, setStartMethod } from './context';
export type { StartMethod } from './context';
export { activeChildren, currentProcess, parentProcess, ParentProcess } from './process';
export type { ProcessOptions } from './process';

/** A child process (API.md "Process"); subclass it and override run(), or pass a target. */
export const Process = callable(ProcessClass);
export type Process<A extends unknown[] = unknown[]> = ProcessClass<A>;

export function setForkserverPreload(modules: string[]): void {
  defaultContext.setForkserverPreload(modules);
}

export function setExecutable(path: string): void {
  defaultContext.setExecutable(path);
}

export * from './shared_memory';
export * from './sharedctypes';
export * from './synchronize';
export * as connection from './connection';
export { Pipe } from './connection';

// Shared memory needs no start-method specific state: a context's factories are the library's.
declare module './context' {
  interface BaseContext {
    Value: typeof Value;
    Array: typeof SharedArray;
    RawValue: typeof RawValue;
    RawArray: typeof RawArray;
    SharedMemory: typeof SharedMemory;
    ShareableList: typeof ShareableList;
    Pipe: typeof makePipe;
  }
}
Object.assign(BaseContext.prototype, { Value, Array: SharedArray, RawValue, RawArray, SharedMemory, ShareableList, Pipe: makePipe });

endEagerCompile();
