// bench/process_start: how long from Process.start() until the target runs, and until
// join() returns, for each start method, against Node's child_process.fork and Python
// 3.13's three start methods, measured in the same run.
//   node dist/bench/process_start.js [runs] [rounds]
// Times come from CLOCK_MONOTONIC in both processes (process.hrtime / time.monotonic_ns),
// so "target running" is measured in the child itself. The rows are measured in rounds
// (3 by default), each round going through every row: a VM whose speed drifts within a
// run (ours does, up to 2x) then slows all rows alike, and the ratios hold.
import { execFileSync, fork as cpFork } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import * as mp from '../src/index';
import { runPython } from './python';

/** The child's first act: write the monotonic clock into the shared slot. */
export function stamp(slot: BigInt64Array): void {
  slot[0] = process.hrtime.bigint();
}

/** One row's samples (ms): start → target running, start → join returned. */
/** Starts before measuring, for every method (Python's side does as many). */
const WARM_UP_STARTS = 10;

interface Row { name: string; running: number[]; joined: number[] }

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** stamp() as a self-contained function: it travels by source, so a child imports no module for it. */
const stampBySource = (slot: BigInt64Array): void => {
  slot[0] = process.hrtime.bigint();
};

async function measureMethod(method: mp.StartMethod, runs: number, target: (slot: BigInt64Array) => void = stamp): Promise<Row> {
  const ctx = mp.getContext(method);
  const slot = mp.RawArray('q', 1) as unknown as BigInt64Array;
  const running: number[] = [];
  const joined: number[] = [];
  // Warm-up starts: the forkserver itself starts on first use, and its first children
  // join late while its own code warms up (Node 20: 8-12 ms for ~10 starts, then ~4.5).
  for (let i = 0; i < WARM_UP_STARTS; i++) {
    const warm = new ctx.Process({ target, args: [slot] });
    warm.start();
    await warm.join();
  }
  for (let i = 0; i < runs; i++) {
    slot[0] = 0n;
    const t0 = process.hrtime.bigint();
    const p = new ctx.Process({ target, args: [slot] });
    p.start();
    await p.join();
    const t2 = process.hrtime.bigint();
    if (p.exitCode !== 0 || slot[0] === 0n) throw new Error(`${method}: child failed (${p.exitCode})`);
    running.push(Number(slot[0] - t0) / 1e6);
    joined.push(Number(t2 - t0) / 1e6);
    p.close();
  }
  return { name: `node-multiprocessing '${method}'${method === 'forkserver' ? ' (warm)' : ''}`, running, joined };
}

async function measureChildProcessFork(runs: number): Promise<Row> {
  const running: number[] = [];
  const joined: number[] = [];
  const script = path.join(__dirname, 'process_start_cp_child.js');
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    const child = cpFork(script, [], { stdio: 'inherit' });
    const t1 = await new Promise<bigint>((resolve) => child.once('message', (m) => resolve(BigInt(m as string))));
    await new Promise((resolve) => child.once('exit', resolve));
    const t2 = process.hrtime.bigint();
    running.push(Number(t1 - t0) / 1e6);
    joined.push(Number(t2 - t0) / 1e6);
  }
  return { name: "node child_process.fork", running, joined };
}

function measurePython(runs: number): Row[] {
  const rows = runPython<Row[]>('process_start_py.py', [runs]);
  return typeof rows === 'string' ? [{ name: `python3.13 unavailable (${rows})`, running: [], joined: [] }] : rows;
}

/**
 * 'fork' needs a --single-threaded process: measure it in one. `flags`: more node flags
 * (--use-largepages=on maps Node's code on huge pages, which a fork copies whole: the
 * child then takes ~100 fewer page faults, README).
 */
function measureForkInChild(runs: number, flags: string[] = []): Row {
  const out = execFileSync(process.execPath, ['--single-threaded', ...flags, __filename, '--fork-only', String(runs)], { encoding: 'utf8' });
  const row = JSON.parse(out) as Row;
  return flags.length ? { ...row, name: `${row.name} (node ${flags.join(' ')})` } : row;
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  if (argv[0] === '--fork-only') {
    process.stdout.write(JSON.stringify(await measureMethod('fork', Number(argv[1]))));
    return;
  }
  if (argv[0] === '--preloaded') {
    // The server imports the target's module once; children then find it loaded.
    mp.setForkserverPreload([__filename]);
    const row = await measureMethod('forkserver', Number(argv[1]));
    process.stdout.write(JSON.stringify({ ...row, name: `${row.name}, target module preloaded` }));
    return;
  }
  const runs = Number(argv[0] ?? 30);
  const rounds = Math.max(1, Number(argv[1] ?? 3));
  const fewer = Math.min(runs, 15);  // spawn-like rows: 50-120 ms each
  const per = (n: number) => Math.ceil(n / rounds);
  const rows = new Map<string, Row>();
  const add = (r: Row) => {
    const have = rows.get(r.name);
    if (have) {
      have.running.push(...r.running);
      have.joined.push(...r.joined);
    } else {
      rows.set(r.name, { name: r.name, running: [...r.running], joined: [...r.joined] });
    }
  };
  for (let round = 0; round < rounds; round++) {
    add(measureForkInChild(per(runs)));
    // Node 26 dropped --use-largepages (it warns and ignores it).
    if (process.platform === 'linux' && Number(process.versions.node.split('.')[0]) < 26) {
      add(measureForkInChild(per(runs), ['--use-largepages=on']));
    }
    add(await measureMethod('forkserver', per(runs)));
    const bySource = await measureMethod('forkserver', per(runs), stampBySource);
    add({ ...bySource, name: `${bySource.name}, target sent by source` });
    add(JSON.parse(execFileSync(process.execPath, [__filename, '--preloaded', String(per(runs))], { encoding: 'utf8' })) as Row);
    add(await measureMethod('spawn', per(fewer)));
    add(await measureChildProcessFork(per(fewer)));
    for (const r of measurePython(per(fewer))) add(r);
  }
  const table = [...rows.values()].map((r) => ({ name: r.name, running: r.running.length ? median(r.running) : NaN, joined: r.joined.length ? median(r.joined) : NaN }));
  const cpf = table.find((r) => r.name.includes('child_process'))!;
  console.log(`process_start: median of ${per(runs) * rounds} runs (spawn-like rows: ${per(fewer) * rounds}) in ${rounds} interleaved rounds ` +
    `on ${os.cpus()[0].model}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`);
  console.log('| start method | start → target running | start → join returned | vs child_process.fork (running) |');
  console.log('|---|---:|---:|---:|');
  for (const r of table) {
    const ratio = Number.isFinite(r.running) ? `${(cpf.running / r.running).toFixed(1)}× faster` : '';
    console.log(`| ${r.name} | ${r.running.toFixed(2)} ms | ${r.joined.toFixed(2)} ms | ${ratio} |`);
  }
  if (process.env.NODE_EXTRA_CA_CERTS && Number(process.versions.node.split('.')[0]) < 22) {
    // Seen on our VM: +60-80 ms per node start, which inflated the ratios to child_process.fork 2-3x.
    console.log('note: NODE_EXTRA_CA_CERTS is set, and Node < 22 reads those certificates at every start: every new ' +
      'node (spawn, child_process.fork, the forkserver) is slower, a fork is not. Unset it to compare without it.');
  }
}

if (require.main === module) {
  void main();
}
