// bench/connection: Pipe round trip (sync and async) and sendBytes echo throughput, against
// Python 3.13's multiprocessing Pipe and Node's child_process IPC in the same run.
// `node dist/bench/connection.js [roundTrips]`.
import { spawn, type ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import * as mp from '../src/index';
import { runPython } from './python';
import type { Connection } from '../src/connection';

const SIZES = [1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024];
const OBJ = { id: 1, name: 'small', values: [1, 2, 3] };

/** Child side: echoes values until null. */
export function echoObjects(conn: Connection): void {
  for (;;) {
    const v = conn.recvSync();
    if (v === null) break;
    conn.send(v);
  }
}

/** Child side: echoes byte messages until an empty one. */
export function echoBytes(conn: Connection): void {
  for (;;) {
    const b = conn.recvBytesSync();
    if (b.length === 0) break;
    conn.sendBytes(b);
  }
}

/** Child side: echoes byte messages received into one reused buffer, until an empty one. */
export function echoBytesInto(conn: Connection, capacity: number): void {
  const buf = Buffer.allocUnsafe(capacity);
  for (;;) {
    const n = conn.recvBytesIntoSync(buf);
    if (n === 0) break;
    conn.sendBytes(buf, 0, n);
  }
}

async function withChild<R>(target: (c: Connection, ...a: any[]) => void, body: (c: Connection) => Promise<R>,
  stop: (c: Connection) => void, extra: unknown[] = []): Promise<R> {
  const [mine, theirs] = mp.Pipe();
  const p = new mp.Process({ target, args: [theirs, ...extra] });
  p.start();
  theirs.close();
  try {
    return await body(mine);
  } finally {
    stop(mine);
    await p.join();
    mine.close();
  }
}

async function roundTrips(n: number): Promise<{ sync: number; async: number }> {
  return withChild(echoObjects, async (c) => {
    for (let i = 0; i < 1000; i++) { c.send(OBJ); c.recvSync(); }
    let sync = Infinity;
    let asyncNs = Infinity;
    for (let k = 0; k < 3; k++) {
      let t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) { c.send(OBJ); c.recvSync(); }
      sync = Math.min(sync, Number(process.hrtime.bigint() - t0) / n);
      t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) { c.send(OBJ); await c.recv(); }
      asyncNs = Math.min(asyncNs, Number(process.hrtime.bigint() - t0) / n);
    }
    return { sync, async: asyncNs };
  }, (c) => c.send(null));
}

async function childProcessIpc(n: number): Promise<number> {
  const child: ChildProcess = spawn(process.execPath,
    ['-e', "process.on('message', (m) => process.send(m)); process.on('disconnect', () => process.exit(0));"],
    { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const once = () => new Promise<void>((resolve) => { child.once('message', () => resolve()); child.send(OBJ); });
  for (let i = 0; i < 500; i++) await once();
  let best = Infinity;
  for (let k = 0; k < 3; k++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) await once();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / n);
  }
  child.disconnect();
  return best;
}

/** Echo throughput per size; `into`: both sides receive into a reused buffer (recvBytesInto). */
async function throughput(into: boolean): Promise<Record<number, number>> {
  const capacity = SIZES[SIZES.length - 1];
  const mine = into ? Buffer.allocUnsafe(capacity) : null;
  const recv = (c: Connection) => (mine ? c.recvBytesIntoSync(mine) : c.recvBytesSync());
  return withChild(into ? echoBytesInto : echoBytes, async (c) => {
    const out: Record<number, number> = {};
    for (const size of SIZES) {
      const data = Buffer.alloc(size, 0x78);
      const reps = Math.max(3, Math.min(2000, Math.floor((256 << 20) / size / 2)));
      c.sendBytes(data); recv(c);
      // Best of 3 rounds, as for the round trips (and on the Python side): the first round
      // also pays the first touch of the memory the received buffers cycle through.
      let best = Infinity;
      for (let k = 0; k < 3; k++) {
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < reps; i++) { c.sendBytes(data); recv(c); }
        best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
      }
      out[size] = (2 * size * reps) / best / 1e6;
    }
    return out;
  }, (c) => c.sendBytes(Buffer.alloc(0)), into ? [capacity] : []);
}

interface PyResult { version: string; start_method: string; rtt_ns: number; echo: Record<string, number>; echo_into: Record<string, number> }

function fmtNs(ns: number | null | undefined): string {
  if (ns === null || ns === undefined || Number.isNaN(ns)) return '—';
  return ns >= 1000 ? `${(ns / 1000).toFixed(2)} µs` : `${ns.toFixed(0)} ns`;
}
function fmtMBs(v: number | null | undefined): string {
  return v === null || v === undefined ? '—' : `${v.toFixed(0)} MB/s`;
}
function sizeName(n: number): string {
  return n >= 1 << 20 ? `${n >> 20} MiB` : `${n >> 10} KiB`;
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const n = Number(argv[0] ?? 20_000);
  const rt = await roundTrips(n);
  const ipc = await childProcessIpc(Math.max(1, Math.floor(n / 4)));
  const tp = await throughput(false);
  const tpInto = await throughput(true);
  const py = runPython<PyResult>('connection_py.py', [n]);
  const pyOk = typeof py === 'object';
  console.log(`machine: ${os.cpus()[0]?.model ?? 'unknown'} (${os.cpus().length} CPUs), ${os.platform()} ${os.release()}`);
  console.log(`node ${process.version} (${mp.getStartMethod()} child); python ${pyOk ? `${py.version} (${py.start_method} child)` : `(${py})`}`);
  const w = [40, 13, 13, 16, 16];
  const line = (c: string[]) => console.log(c.map((s, i) => (i === 0 ? s.padEnd(w[i]) : s.padStart(w[i]))).join(' | '));
  line(['operation', 'node', 'python', 'child_process', 'goal']);
  console.log(w.map((x) => '-'.repeat(x)).join('-|-'));
  line(['small object round trip (sync)', fmtNs(rt.sync), fmtNs(pyOk ? py.rtt_ns : null), fmtNs(ipc), '≤ 10 µs']);
  line(['small object round trip (async)', fmtNs(rt.async), '', '', '≤ 30 µs']);
  for (const size of SIZES) {
    line([`sendBytes echo ${sizeName(size)}`, fmtMBs(tp[size]), fmtMBs(pyOk ? py.echo[String(size)] : null), '', '≥ python']);
  }
  for (const size of SIZES) {
    line([`  same, recvBytesInto ${sizeName(size)}`, fmtMBs(tpInto[size]), fmtMBs(pyOk ? py.echo_into[String(size)] : null), '', '≥ python']);
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
