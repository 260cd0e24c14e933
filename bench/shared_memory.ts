// Shared memory benchmarks, against Python 3.13 in the same run where it applies.
//   node dist/bench/shared_memory.js            (256 MiB array for the child-sum case)
//   MP_BENCH_LARGE=1 node dist/bench/shared_memory.js   (1 GiB)
//   MP_BENCH_SCALE=0.2 ...                       (fewer iterations)
import * as os from 'node:os';
import * as mp from '../src/index';
import { runPython } from './python';

const SCALE = Number(process.env.MP_BENCH_SCALE ?? '1') || 1;
const LARGE_BYTES = process.env.MP_BENCH_LARGE === '1' ? 1024 ** 3 : 256 * 1024 ** 2;

function nowNs(): bigint {
  return process.hrtime.bigint();
}

function nsPerOp(n: number, fn: (n: number) => void): number {
  const t0 = nowNs();
  fn(n);
  return Number(nowNs() - t0) / n;
}

function best(runs: number, f: () => number): number {
  let b = Infinity;
  for (let i = 0; i < runs; i++) b = Math.min(b, f());
  return b;
}

// -- Value increment under its lock --------------------------------------------
function valueIncrement(n: number): number {
  const v = mp.Value('i', 0);
  const lock = v.getLock();
  const ns = nsPerOp(n, (k) => {
    for (let i = 0; i < k; i++) {
      lock.acquireSync();
      try {
        v.value += 1;
      } finally {
        lock.release();
      }
    }
  });
  if (v.value !== n) throw new Error(`lost increments: ${v.value} != ${n}`);
  return ns;
}

// -- element read/write throughput -------------------------------------------
const writeReadSource = `
  let s = 0;
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < a.length; i++) a[i] = i * 0.5 + r;
    for (let i = 0; i < a.length; i++) s += a[i];
  }
  return s;`;

/**
 * Element accesses (reads + writes) per second of each array, measured in turns
 * (so load changes on the machine hit every kind alike), best of 5. Each array gets
 * its own copy of the loop, so one kind's type feedback does not slow another's.
 */
function throughputs(arrays: Float64Array[], rounds: number): number[] {
  const fns = arrays.map(
    // eslint-disable-next-line @typescript-eslint/no-implied-eval
    () => new Function('a', 'rounds', writeReadSource) as (a: Float64Array, rounds: number) => number,
  );
  fns.forEach((f, k) => f(arrays[k], 2)); // warm-up
  const bestNs = arrays.map(() => Infinity);
  for (let turn = 0; turn < 5; turn++) {
    arrays.forEach((a, k) => {
      const t0 = nowNs();
      fns[k](a, rounds);
      bestNs[k] = Math.min(bestNs[k], Number(nowNs() - t0));
    });
  }
  return arrays.map((a, k) => (2 * a.length * rounds) / (bestNs[k] / 1e9));
}

function syncArrayThroughput(n: number): number {
  const a = mp.Array('d', n);
  const t0 = nowNs();
  for (let i = 0; i < n; i++) a[i] = i;
  let s = 0;
  for (let i = 0; i < n; i++) s += a[i];
  if (s < 0) throw new Error('unreachable');
  return (2 * n) / (Number(nowNs() - t0) / 1e9);
}

// -- a child sums a large shared array ---------------------------------------
/** Sums `arr` twice: the first pass also maps the pages into this process. */
export function sumShared(arr: Float64Array, out: { value: number }, ns: Float64Array): void {
  for (let pass = 0; pass < 2; pass++) {
    const t0 = process.hrtime.bigint();
    let s = 0;
    for (let i = 0; i < arr.length; i++) s += arr[i];
    ns[pass] = Number(process.hrtime.bigint() - t0);
    out.value = s;
  }
}

function sumLocal(arr: Float64Array): { sum: number; ns: number } {
  const t0 = nowNs();
  let s = 0;
  for (let i = 0; i < arr.length; i++) s += arr[i];
  return { sum: s, ns: Number(nowNs() - t0) };
}

async function childSum(bytes: number): Promise<{ childCold: number; childNs: number; localCold: number; localNs: number; totalNs: number; ok: boolean }> {
  const n = bytes / 8;
  const shared = mp.RawArray('d', n);
  for (let i = 0; i < n; i++) shared[i] = i & 1023;
  const out = mp.RawValue('d');
  const childNs = mp.RawArray('d', 2);
  const t0 = nowNs();
  const p = new mp.Process({ target: sumShared, args: [shared, out, childNs] });
  p.start();
  await p.join(120_000);
  const totalNs = Number(nowNs() - t0);
  if (p.exitCode !== 0) throw new Error(`child failed: ${p.exitCode}`);
  // The same work on a local array of this process.
  const local = new Float64Array(n);
  for (let i = 0; i < n; i++) local[i] = i & 1023;
  const localCold = sumLocal(local).ns;
  const { sum, ns: localNs } = sumLocal(local);
  return { childCold: childNs[0], childNs: childNs[1], localCold, localNs, totalNs, ok: sum === out.value };
}

// -- SharedMemory create+unlink ----------------------------------------------
function shmCreateUnlink(n: number): number {
  return nsPerOp(n, (k) => {
    for (let i = 0; i < k; i++) {
      const s = new mp.SharedMemory({ create: true, size: 4096 });
      s.close();
      s.unlink();
    }
  });
}

function python(): { python: string; value_increment_ns: number; shm_create_unlink_ns: number } | null {
  const r = runPython<{ python: string; value_increment_ns: number; shm_create_unlink_ns: number }>('shared_memory_py.py', [SCALE]);
  return typeof r === 'string' ? null : r;
}

function machine(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'unknown CPU'} x${cpus.length}, ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB, ` +
    `${os.type()} ${os.release()}, Node ${process.version}`;
}

function fmtNs(ns: number): string {
  return ns >= 1e6 ? `${(ns / 1e6).toFixed(1)} ms` : ns >= 1e3 ? `${(ns / 1e3).toFixed(2)} µs` : `${ns.toFixed(0)} ns`;
}

export async function main(): Promise<void> {
  const rows: string[][] = [];
  const py = python();

  const hasLocks = typeof (mp as Record<string, unknown>).RLock === 'function';
  if (hasLocks) {
    valueIncrement(20_000);
    const inc = best(3, () => valueIncrement(Math.round(300_000 * SCALE)));
    rows.push(['Value increment under its lock', fmtNs(inc), py ? fmtNs(py.value_increment_ns) : 'n/a', '≤ 400 ns']);
  } else {
    rows.push(['Value increment under its lock', 'no locks in this build', py ? fmtNs(py.value_increment_ns) : 'n/a', '≤ 400 ns']);
  }

  const N = 1 << 20;
  const rounds = Math.max(1, Math.round(20 * SCALE));
  const shm = new mp.SharedMemory({ create: true, size: N * 8 });
  const [plain, raw, shmView] = throughputs(
    [new Float64Array(N), mp.RawArray('d', N), new Float64Array(shm.buf.buffer, shm.buf.byteOffset, N)], rounds);
  shm.close();
  shm.unlink();
  rows.push(['RawArray(d) element r/w (8 MiB)', `${(raw / 1e6).toFixed(0)} M/s = ${((raw / plain) * 100).toFixed(0)} % of plain`,
    `plain Float64Array ${(plain / 1e6).toFixed(0)} M/s`, '≥ 90 %']);
  rows.push(['SharedMemory Float64Array view r/w', `${(shmView / 1e6).toFixed(0)} M/s = ${((shmView / plain) * 100).toFixed(0)} % of plain`, '', '≥ 90 %']);
  if (hasLocks) {
    const sync = syncArrayThroughput(Math.round(200_000 * SCALE));
    rows.push(['Array(d) with lock, a[i] per element', `${(sync / 1e6).toFixed(2)} M/s`, '', '(locks each access)']);
  }

  const big = await childSum(LARGE_BYTES);
  const mib = LARGE_BYTES / 1024 ** 2;
  rows.push([`child sums shared Float64Array (${mib} MiB), 2nd pass`,
    `${fmtNs(big.childNs)} = ${((big.localNs / big.childNs) * 100).toFixed(0)} % of local speed${big.ok ? '' : ' (SUM MISMATCH)'}`,
    `local 2nd pass ${fmtNs(big.localNs)}`, '≥ 90 %']);
  rows.push([`  same, 1st pass (maps pages in)`,
    `${fmtNs(big.childCold)} = ${((big.localCold / big.childCold) * 100).toFixed(0)} % of local speed`,
    `local 1st pass ${fmtNs(big.localCold)}; child start+2 sums+join ${fmtNs(big.totalNs)}`, '']);

  shmCreateUnlink(200);
  const cu = best(3, () => shmCreateUnlink(Math.round(5_000 * SCALE)));
  rows.push(['SharedMemory 4 KiB create+close+unlink', fmtNs(cu), py ? fmtNs(py.shm_create_unlink_ns) : 'n/a', 'Python 16 µs']);

  const header = ['benchmark', 'node-multiprocessing', py ? `Python ${py.python}` : 'Python 3.13 (not found)', 'goal'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => (c ?? '').padEnd(widths[i])).join(' | ') + ' |';
  console.log(`Shared memory benchmarks on ${machine()}, start method ${mp.getStartMethod()}`);
  console.log(line(header));
  console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  for (const r of rows) console.log(line(r));
}

if (require.main === module) {
  main().then(() => process.exit(0), (e) => {
    console.error(e);
    process.exit(1);
  });
}
