// bench/sync: Lock and Semaphore costs, against Python 3.13's multiprocessing in the
// same run. `node dist/bench/sync.js [iterations] [rounds]`.
import * as os from 'node:os';
import * as mp from '../src/index';
import { runPython } from './python';

/** The other side of the hand-off: takes `a`, gives `b`, `rounds` times. */
export function pingPong(a: mp.Semaphore, b: mp.Semaphore, rounds: number): void {
  for (let i = 0; i < rounds; i++) {
    a.acquireSync();
    b.release();
  }
}

function nsPer(n: number, fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / n;
}

function benchSync(n: number): number {
  const lock = new mp.Lock();
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    best = Math.min(best, nsPer(n, () => {
      for (let i = 0; i < n; i++) {
        lock.acquireSync();
        lock.release();
      }
    }));
  }
  lock.close();
  return best;
}

async function benchAsync(n: number): Promise<number> {
  const lock = new mp.Lock();
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      await lock.acquire();
      lock.release();
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
  }
  lock.close();
  return best;
}

/** Half a round trip through two semaphores between this process and a child. */
async function benchHandoff(rounds: number, asyncParent: boolean): Promise<number> {
  const a = new mp.Semaphore(0);
  const b = new mp.Semaphore(0);
  const warm = 200;
  const p = new mp.Process({ target: pingPong, args: [a, b, rounds + warm] });
  p.start();
  for (let i = 0; i < warm; i++) {
    a.release();
    b.acquireSync({ timeout: 30_000 });
  }
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) {
    a.release();
    if (asyncParent) await b.acquire({ timeout: 30_000 });
    else b.acquireSync({ timeout: 30_000 });
  }
  const dt = Number(process.hrtime.bigint() - t0);
  await p.join(30_000);
  a.close();
  b.close();
  return dt / rounds / 2;
}

function benchValue(n: number): number | null {
  if (typeof mp.Value !== 'function') return null;
  const v = mp.Value('i', 0);
  const lock = v.getLock();
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    best = Math.min(best, nsPer(n, () => {
      for (let i = 0; i < n; i++) {
        lock.acquireSync();
        v.value = v.value + 1;
        lock.release();
      }
    }));
  }
  return best;
}

interface PyResult {
  version: string;
  uncontended_sync_ns: number;
  handoff_ns: number;
  value_increment_ns: number;
}

function fmt(ns: number | null | undefined): string {
  if (ns === null || ns === undefined || Number.isNaN(ns)) return '—';
  return ns >= 1000 ? `${(ns / 1000).toFixed(2)} µs` : `${ns.toFixed(0)} ns`;
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const n = Number(argv[0] ?? 1_000_000);
  const rounds = Number(argv[1] ?? 20_000);
  const sync = benchSync(n);
  const asyncNs = await benchAsync(Math.max(1, Math.floor(n / 5)));
  const handoff = await benchHandoff(rounds, false);
  const handoffAsync = await benchHandoff(Math.floor(rounds / 2), true);
  const value = benchValue(Math.floor(n / 4));
  const py = runPython<PyResult>('sync_py.py', [n, rounds], 120_000);
  const pyOk = typeof py === 'object';
  const rows: Array<[string, number | null, number | null, string]> = [
    ['uncontended Lock acquire+release (sync)', sync, pyOk ? py.uncontended_sync_ns : null, '≤ 120 ns'],
    ['uncontended Lock acquire+release (async)', asyncNs, null, '≤ 2 µs'],
    ['hand-off between 2 processes (sync)', handoff, pyOk ? py.handoff_ns : null, '≤ 20 µs'],
    ['hand-off, parent waits async', handoffAsync, null, ''],
    ['Value("i") += 1 under its lock', value, pyOk ? py.value_increment_ns : null, ''],
  ];
  console.log(`machine: ${os.cpus()[0]?.model ?? 'unknown'} (${os.cpus().length} CPUs), ${os.platform()} ${os.release()}`);
  console.log(`node ${process.version}; python ${pyOk ? py.version : `(${py})`}; ${mp.getStartMethod()} children`);
  const w = [44, 12, 12, 10];
  const line = (c: string[]) => console.log(c.map((s, i) => (i === 0 ? s.padEnd(w[i]) : s.padStart(w[i]))).join(' | '));
  line(['operation', 'node', 'python', 'goal']);
  console.log(w.map((x) => '-'.repeat(x)).join('-|-'));
  for (const [name, ours, theirs, goal] of rows) line([name, fmt(ours), fmt(theirs), goal]);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
