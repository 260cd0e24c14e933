// Shared test helpers: which start methods to test, bounded waits, scenario scripts.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as mp from '../src/index';

/** Start methods this mocha run covers (MP_TEST_METHODS narrows it, e.g. "fork"). */
export function methodsUnderTest(): mp.StartMethod[] {
  const all = mp.getAllStartMethods();
  const only = process.env.MP_TEST_METHODS?.split(',').filter(Boolean);
  return only ? all.filter((m) => only.includes(m)) : all;
}

/** Rejects if `p` does not settle within `ms`: a hang is a failure, not a wait. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function tmpFile(tag: string): string {
  return path.join(os.tmpdir(), `mp-test-${process.pid}-${tag}-${Math.random().toString(36).slice(2)}`);
}

export function readJson<T = any>(file: string): T {
  const v = JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  fs.rmSync(file, { force: true });
  return v;
}

export function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

export const fixtures = path.join(__dirname, 'fixtures');

export interface ScenarioResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a fixture script in its own node (with --single-threaded for 'fork'). */
export function runScenario(script: string, args: string[], opts: { singleThreaded?: boolean; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ScenarioResult> {
  const nodeArgs = [...(opts.singleThreaded ? ['--single-threaded'] : []), path.join(fixtures, script), ...args];
  return new Promise((resolve) => {
    execFile(process.execPath, nodeArgs, { timeout: opts.timeoutMs ?? 20_000, env: { ...process.env, ...opts.env } },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null;
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr });
      });
  });
}

/** pids whose parent is `pid` (Linux /proc). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie is dead for our purposes.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

export async function waitUntil(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
