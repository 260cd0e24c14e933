// Starting a child as a fresh node process (Python's popen_spawn_posix.py).
import type { ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, UV_WRITABLE } from './native';
import { aliveReadFd, PopenBase } from './popen_fork';
import type { Process } from './process';
import { encodeLaunch, prepareLaunch } from './spawn';
import { closeFds, lazyChildProcess } from './util';

let executable = process.execPath;

/** The node binary that spawn and forkserver run (default: this process's). */
export function setExecutable(exe: string): void {
  if (typeof exe !== 'string' || exe === '') throw new TypeError('setExecutable(path): path must be a non-empty string');
  executable = exe;
}

export function getExecutable(): string {
  return executable;
}

// Options that say what the parent runs rather than how Node runs: given to a child (or to
// the forkserver), `-e code` would run the parent's code again instead of our entry, and
// that code starts children of its own, and so on (seen: a fork bomb from `node -e`).
// The same for printing, checking, testing, watching, a REPL; a debugger port cannot be
// shared. Each listed option that takes a value takes it as `--opt=value` or as the next
// argument.
const PARENT_ONLY_WITH_VALUE = new Set([
  '-e', '--eval', '-p', '--print', '-pe', '-ep', '--input-type', '--run', '--inspect-port', '--debug-port',
  '--watch-path', '--test-name-pattern', '--test-skip-pattern', '--test-reporter', '--test-reporter-destination',
  '--test-concurrency', '--test-timeout', '--test-shard',
]);
const PARENT_ONLY = /^(-i|--interactive|-c|--check|--test|--test-[\w-]+|--watch|--watch-[\w-]+|--inspect(-brk|-wait)?|--debug-port)(=.*)?$|^(--eval|--print|--input-type|--run|--inspect-port)=/;

/** execArgv for a helper node: the parent's, minus the options above. */
export function childExecArgv(): string[] {
  const argv = process.execArgv;
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (PARENT_ONLY_WITH_VALUE.has(argv[i])) {
      i++;  // and its value
    } else if (!PARENT_ONLY.test(argv[i])) {
      out.push(argv[i]);
    }
  }
  return out;
}

export const spawnMainPath = path.join(__dirname, 'spawn_main.js');

/** Frames a launch message: [u32 length][u32 fd count][payload]. */
export function frameLaunch(payload: Buffer, fdCount: number): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32BE(payload.length, 0);
  header.writeUInt32BE(fdCount, 4);
  return Buffer.concat([header, payload]);
}

export class PopenSpawn extends PopenBase {
  readonly method = 'spawn';
  private child: ChildProcess;
  private nodeExitCode: number | null = null;

  constructor(proc: Process) {
    super();
    const fds = [aliveReadFd()];
    const launch = prepareLaunch(proc, 'spawn', fds, 0, null);
    const message = frameLaunch(encodeLaunch(launch), fds.length);
    // fd 3 of the child: this socket carries the launch message, then stays open
    // until the child ends (our sentinel) or we end (its lifeline).
    const [mine, theirs] = native.socketpair();
    let child: ChildProcess;
    try {
      child = lazyChildProcess().spawn(executable, [...childExecArgv(), spawnMainPath], {
        stdio: ['inherit', 'inherit', 'inherit', theirs, ...fds],
        windowsHide: true,
      });
    } finally {
      native.close(theirs);
    }
    if (child.pid === undefined) {
      native.close(mine);
      // The 'error' event carries the reason; spawn reports it asynchronously.
      child.on('error', () => {});
      throw new Error(`cannot spawn ${executable}: the process did not start (is the path right?)`);
    }
    this.child = child;
    child.on('exit', (code, signal) => {
      this.nodeExitCode = code ?? (signal ? -(os.constants.signals[signal] ?? 1) : 255);
    });
    child.unref();
    this.pid = child.pid;
    this.sentinel = mine;
    this.writeLaunch(mine, message);
    this.watch(proc);
  }

  /** Writes what fits now; the rest follows as the child reads (never blocks the loop). */
  private writeLaunch(fd: number, message: Buffer): void {
    native.setNonblock(fd, true);
    let off = 0;
    try {
      off = native.write(fd, message);
    } catch {
      return; // the child died already: its exit status tells why
    }
    if (off >= message.length) return;
    const wfd = native.dup(fd);
    const w = new native.FdWatcher(wfd, (status) => {
      try {
        if (status < 0) throw new Error('poll');
        off += native.write(wfd, message, off);
      } catch {
        off = message.length;
      }
      if (off >= message.length) {
        w.close();
        closeFds([wfd]);
      }
    });
    w.start(UV_WRITABLE);
    w.unref();
  }

  protected readStatus(): number {
    if (this.nodeExitCode !== null) return this.nodeExitCode;
    try {
      // Leave the zombie for libuv, which reaps it and emits 'exit'.
      return native.waitpidNoReap(this.pid, true) ?? 255;
    } catch {
      return this.nodeExitCode ?? 255;
    }
  }

  override close(): void {
    super.close();
    this.child.removeAllListeners('exit');
  }
}
