// `npm start`: real parallel work with node-multiprocessing, and how fast it starts.
// Counts primes below N by splitting the range over one process per core; the workers
// write their counts into shared memory (no messages), and the parent sums them.
import * as os from 'node:os';
import * as mp from '../src/index';

/** Counts primes in [lo, hi) and stores the count in slot `i` of the shared array. */
export function countPrimes(lo: number, hi: number, out: Float64Array, i: number): void {
  let count = 0;
  for (let n = Math.max(lo, 2); n < hi; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) {
      if (n % d === 0) {
        prime = false;
        break;
      }
    }
    if (prime) count++;
  }
  out[i] = count;
}

async function parallel(n: number, workers: number): Promise<{ primes: number; ms: number }> {
  const out = mp.RawArray('d', workers) as unknown as Float64Array;
  const t0 = performance.now();
  const procs: mp.Process[] = [];
  // Later ranges cost more per number: interleave chunks so every worker gets a fair share.
  const chunks = workers * 8;
  const bounds = Array.from({ length: chunks + 1 }, (_, k) => Math.round((n * k) / chunks));
  for (let w = 0; w < workers; w++) {
    const p = new mp.Process({ target: countMany, args: [bounds, w, workers, out] });
    p.start();
    procs.push(p);
  }
  await Promise.all(procs.map((p) => p.join()));
  for (const p of procs) if (p.exitCode !== 0) throw new Error(`${p.name} failed: exit code ${p.exitCode}`);
  return { primes: out.reduce((a, b) => a + b, 0), ms: performance.now() - t0 };
}

/** Worker `w` of `workers` takes every `workers`-th chunk. */
export function countMany(bounds: number[], w: number, workers: number, out: Float64Array): void {
  const scratch = new Float64Array(1);
  let total = 0;
  for (let k = w; k < bounds.length - 1; k += workers) {
    countPrimes(bounds[k], bounds[k + 1], scratch, 0);
    total += scratch[0];
  }
  out[w] = total;
}

/** Start → join of one tiny child, in ms (the first also starts the forkserver, if that is the method). */
async function timeOneStart(): Promise<number> {
  const t0 = performance.now();
  const p = new mp.Process({ target: countPrimes, args: [0, 10, new Float64Array(1), 0] });
  p.start();
  await p.join();
  p.close();
  return performance.now() - t0;
}

async function startLatency(): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 20; i++) times.push(await timeOneStart());
  return times.sort((a, b) => a - b)[10];
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 3_000_000);
  const workers = mp.cpuCount();
  console.log(`node-multiprocessing demo on ${os.cpus()[0].model}, ${workers} cores, Node ${process.version}`);
  console.log(`start method: ${mp.getStartMethod()} (available: ${mp.getAllStartMethods().join(', ')})`);
  // The forkserver loads this module (its targets) once; each child then finds it loaded
  // instead of importing it. Safe here: what runs the demo is behind the main-module guard.
  mp.setForkserverPreload([__filename]);
  // Started before the timed work, as a program would long before its hot path.
  const first = await timeOneStart();
  console.log(`first child, which ${mp.getStartMethod() === 'forkserver' ? 'also starts the forkserver' : 'starts'}: ` +
    `${first.toFixed(0)} ms (once per program)`);

  const t0 = performance.now();
  const one = new Float64Array(1);
  countPrimes(0, n, one, 0);
  const serialMs = performance.now() - t0;
  console.log(`primes below ${n.toLocaleString('en')} in this process:   ${one[0]} in ${serialMs.toFixed(0)} ms`);

  const par = await parallel(n, workers);
  console.log(`primes below ${n.toLocaleString('en')} in ${workers} processes:    ${par.primes} in ${par.ms.toFixed(0)} ms ` +
    `(${(serialMs / par.ms).toFixed(2)}× faster, results through shared memory)`);
  if (par.primes !== one[0]) throw new Error('the parallel count differs from the serial one');

  const latency = await startLatency();
  console.log(`start → join of a child process: ${latency.toFixed(2)} ms (median of 20, ${mp.getStartMethod()})`);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
