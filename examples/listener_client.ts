// Listener and Client: processes that find each other by address instead of inheriting a
// Pipe, and prove they share a key (Python 3.12+'s HMAC handshake: a Python
// multiprocessing.connection.Client or Listener can be the other side, the same way).
//   node dist/examples/listener_client.js
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as mp from '../src/index';
import type { Connection } from '../src/connection';

const AUTHKEY = Buffer.from('a key both sides know');

type Reply = { worker: number; job: number; square: number };

/** A worker knows only the address: it connects, then squares numbers until it gets null. */
export async function worker(address: string, id: number): Promise<void> {
  const conn = await mp.connection.Client(address, { authkey: AUTHKEY });
  for (;;) {
    const job = (await conn.recv()) as number | null;
    if (job === null) break;
    conn.send({ worker: id, job, square: job ** 2 } satisfies Reply);
  }
  conn.close();
}

async function main(): Promise<void> {
  // A Unix socket in a private directory; Windows has named pipes instead.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mp-example-'));
  const at = process.platform === 'win32' ? `\\\\.\\pipe\\mp-example-${process.pid}` : path.join(dir, 'socket');
  const listener = new mp.connection.Listener({ address: at, authkey: AUTHKEY });
  const address = listener.address as string;
  const workers = [1, 2].map((id) => new mp.Process({ target: worker, args: [address, id] }));
  for (const w of workers) w.start();
  const conns: Connection[] = [];
  for (let i = 0; i < workers.length; i++) conns.push(await listener.accept());
  console.log(`${conns.length} workers connected to ${address}`);

  // Hand out jobs to whichever worker is free: wait() says which connections have a reply.
  const jobs = [1, 2, 3, 4, 5, 6];
  const results: Reply[] = [];
  // (A worker told to stop closes its end, which wait() reports too: only busy ones are waited on.)
  const busy = new Set(conns);
  for (const conn of conns) conn.send(jobs.shift()!);
  while (busy.size > 0) {
    const ready = await mp.connection.wait(busy, 10_000);
    if (ready.length === 0) throw new Error('no worker answered within 10 s');
    for (const conn of ready) {
      results.push((await conn.recv()) as Reply);
      const next = jobs.shift();
      conn.send(next ?? null);
      if (next === undefined) busy.delete(conn);
    }
  }
  for (const r of results.sort((a, b) => a.job - b.job)) console.log(`${r.job}² = ${r.square}`);
  await Promise.all(workers.map((w) => w.join()));

  // A client with the wrong key is turned away, and the listener's accept() says so too.
  const accepted = listener.accept().then(() => 'accepted', (e: Error) => e.name);
  const refused = await mp.connection.Client(address, { authkey: Buffer.from('a wrong key') }).then(
    () => 'connected', (e: Error) => e.name);
  console.log(`client with a wrong key: ${refused}; listener: ${await accepted}`);
  for (const conn of conns) conn.close();
  listener.close();
  fs.rmSync(dir, { recursive: true, force: true });
  if (workers.some((w) => w.exitCode !== 0)) process.exitCode = 1;
}

if (require.main === module) void main();
