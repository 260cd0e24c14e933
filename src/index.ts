// node-multiprocessing: Python's multiprocessing for Node.js.
import { callable, defaultContext } from './context';
import { Process as ProcessClass } from './process';

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
