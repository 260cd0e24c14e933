// Connections (API.md "Connections"): Pipe, framing, sync/async reads, poll, wait(),
// Listener/Client with authentication, fd passing, Python interop, bad input.
import { expect } from 'chai';
import * as v8 from 'node:v8';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as mp from '../src/index';
import { Client, Connection, Listener, Pipe, wait, waitSync } from '../src/connection';
import { native } from '../src/native';
import * as targets from './fixtures/conn_targets';
import { fixtures, methodsUnderTest, openFdCount, tmpFile, within } from './helpers';

/** The Python 3.13 interpreter (MP_PYTHON, pyenv's 3.13, or python3.13 on PATH), or null. */
export function findPython(): string | null {
  const candidates = [process.env.MP_PYTHON ?? ''];
  const pyenv = path.join(process.env.PYENV_ROOT ?? path.join(process.env.HOME ?? '/root', '.pyenv'), 'versions');
  try {
    for (const v of fs.readdirSync(pyenv).filter((d) => d.startsWith('3.13')).sort().reverse()) {
      candidates.push(path.join(pyenv, v, 'bin', 'python3.13'));
    }
  } catch {
    /* no pyenv */
  }
  candidates.push('python3.13');
  for (const c of candidates.filter(Boolean)) {
    try {
      const out = execFileSync(c, ['-c', 'import sys; print(sys.version_info[:2] >= (3, 12))'], { encoding: 'utf8', timeout: 10_000 });
      if (out.trim() === 'True') return c;
    } catch {
      /* next */
    }
  }
  return null;
}

function expectRejects(p: Promise<unknown>, check: (e: Error) => void): Promise<void> {
  return p.then(
    () => { throw new Error('expected a rejection'); },
    (e: Error) => { check(e); },
  );
}

function rawFrame(len: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(4);
  h.writeInt32BE(len, 0);
  return Buffer.concat([h, body]);
}

function writeRaw(c: Connection, b: Buffer): void {
  let off = 0;
  while (off < b.length) off += native.write(c.fileno(), b, off);
}

describe('connection: in one process', function () {
  this.timeout(20_000);

  it('keeps the process alive while an async read waits, and not after', () => {
    const lib = JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'));
    const script = `
      const mp = require(${lib});
      (async () => {
        const [a, b] = mp.Pipe();
        b.send(1);
        await a.recv();                        // its watcher now idles
        const pending = a.recv().then((v) => process.stdout.write('got ' + v));
        setImmediate(() => b.send(2));         // then only the waiting read keeps the loop alive
        await pending;
        b.send(3);                             // arrives with no read waiting: must not hold the process
      })();`;
    const out = execFileSync(process.execPath, ['-e', script], { timeout: 10_000, encoding: 'utf8' });
    expect(out).to.equal('got 2');
  });

  it('an async read after unread data stopped the watcher keeps the process alive too', () => {
    // The bytes come from another process, late: only the waiting read can keep the loop alive.
    const lib = JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'));
    const script = `
      const mp = require(${lib});
      const { spawn } = require('node:child_process');
      (async () => {
        const [r, w] = mp.Pipe(false);
        const msg = (s) => "printf '\\\\000\\\\000\\\\000\\\\00" + s.length + s + "' >&3";
        const writer = spawn('sh', ['-c', ['sleep 0.15', msg('a'), 'sleep 0.2', msg('b'), 'sleep 0.4', msg('c')].join('; ')],
          { stdio: ['ignore', 'ignore', 'inherit', w.fileno()] });
        writer.unref();
        w.close();
        await r.recvBytes();                   // 'a', awaited: the watcher now idles, unref'd
        await new Promise((res) => setTimeout(res, 400));  // 'b' arrives unread: the watcher stops
        r.recvBytesSync();
        r.recvBytes().then((v) => process.stdout.write('got ' + v));  // 'c', ~0.2 s later
      })();`;
    const out = execFileSync(process.execPath, ['-e', script], { timeout: 10_000, encoding: 'utf8' });
    expect(out).to.equal('got c');
  });

  it('a worker thread that ends with an async read or wait pending leaves the process intact', () => {
    // The addon is unloaded with the worker: a libuv close callback of ours running after
    // that crashed the process (SIGSEGV with the first case).
    const lib = JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'));
    const cases = [
      'const [a] = mp.Pipe(); a.recv(); ready();',
      'new mp.Semaphore(0).acquire(); ready();',
      'const [c, d] = mp.Pipe(); d.send(1); c.recv().then(ready);',  // its watcher idles
    ];
    for (const body of cases) {
      const script = `
        const { Worker } = require('node:worker_threads');
        const w = new Worker(${JSON.stringify(`const mp = require(${lib});
          const ready = () => require('node:worker_threads').parentPort.postMessage('ready');
          ${body}`)}, { eval: true });
        w.on('message', async () => { await w.terminate(); process.stdout.write('main alive'); });`;
      const out = execFileSync(process.execPath, ['-e', script], { timeout: 10_000, encoding: 'utf8' });
      expect(out, body).to.equal('main alive');
    }
  });

  it('duplex Pipe carries values both ways, sync and async', async () => {
    const [a, b] = Pipe();
    const value = { n: 1, s: 'x', m: new Map([[1, 'one']]), set: new Set([2]), d: new Date(5), big: 10n ** 20n, buf: Buffer.from('hi'), arr: new Float64Array([1.5]) };
    a.send(value);
    expect(b.recvSync()).to.deep.equal(value);
    b.send('back');
    expect(await within(a.recv(), 5000, 'recv')).to.equal('back');
    expect(a.readable && a.writable).to.equal(true);
    a.close();
    b.close();
    expect(a.closed).to.equal(true);
    expect(() => a.send(1)).to.throw(/closed/);
  });

  it('small values (sent as JSON text) and values JSON would alter arrive exactly as the V8 serializer delivers them', () => {
    const [a, b] = Pipe();
    const shared = { k: 1 };
    const holey = [1, , 3]; // eslint-disable-line no-sparse-arrays
    const named = Object.assign([1, 2], { extra: 'kept' });
    const cyclic: Record<string, unknown> = { name: 'loop' };
    cyclic.self = cyclic;
    const values: unknown[] = [
      { id: 1, name: 'small', values: [1, 2, 3], nested: { ok: true, none: null } },
      'text with \u00e9 and \ud83d\ude00 and a lone \ud800 surrogate', 0, 1.5e300, -7, true, null, [], {},
      -0, NaN, Infinity, undefined, [undefined], { u: undefined }, holey, named, [shared, shared], cyclic,
      { toJSON: 'not a method' }, Object.create(null), new Date(7), 5n, { ['__proto__']: 1 },
      { long: 'y'.repeat(100_000) }, // JSON form, but longer than the one-call native send takes
    ];
    // Every read is bounded: the message must be there within 5 s before recvSync() takes it.
    const next = (): unknown => {
      expect(b.pollSync(5000), 'a message arrives').to.equal(true);
      return b.recvSync();
    };
    for (const v of values) {
      a.send(v);
      const got = next();
      expect(got).to.deep.equal(v8.deserialize(v8.serialize(v)), `value #${values.indexOf(v)}`);
    }
    a.send(-0);
    expect(Object.is(next(), -0)).to.equal(true);
    a.send([shared, shared]);
    const [x, y] = next() as object[];
    expect(x).to.equal(y); // one object, as the V8 serializer keeps it
    a.send(named);
    expect((next() as { extra?: string }).extra).to.equal('kept');
    a.send(cyclic);
    const c = next() as Record<string, unknown>;
    expect(c.self).to.equal(c);
    a.send(holey);
    expect(1 in (next() as unknown[])).to.equal(false);
    a.close();
    b.close();
  });

  it('simplex Pipe is [reader, writer]', async () => {
    const [r, w] = Pipe({ duplex: false });
    expect([r.readable, r.writable, w.readable, w.writable]).to.deep.equal([true, false, false, true]);
    w.send([1, 2]);
    expect(await within(r.recv(), 5000, 'recv')).to.deep.equal([1, 2]);
    expect(() => r.send(1)).to.throw(/read-only/);
    expect(() => w.recvSync()).to.throw(/write-only/);
    w.close();
    expect(() => r.recvSync()).to.throw().with.property('name', 'EOFError');
    r.close();
  });

  it('send() of an unserializable value throws in the sender', () => {
    const [a, b] = Pipe();
    expect(() => a.send({ f: () => 1 })).to.throw(TypeError, /cannot send/);
    a.send('still fine');
    expect(b.recvSync()).to.equal('still fine');
    a.close();
    b.close();
  });

  it('sync and async reads keep the order they were asked in', async () => {
    const [a, b] = Pipe();
    const p1 = b.recv();
    const p2 = b.recvBytes();
    for (let i = 0; i < 5; i++) a.send(i);
    expect(b.recvSync()).to.equal(2); // p1 and p2 came first
    const p4 = b.recv();
    expect(b.recvSync()).to.equal(4);
    expect(await within(p1, 5000, 'p1')).to.equal(0);
    expect((await within(p2, 5000, 'p2')).length).to.be.greaterThan(0);
    expect(await within(p4, 5000, 'p4')).to.equal(3);
    for (let i = 0; i < 100; i++) a.send(i); // send blocks once the socket buffer is full (as Python)
    const got: number[] = [];
    for (let i = 0; i < 100; i++) got.push(i % 3 === 0 ? b.recvSync() as number : await b.recv() as number);
    expect(got).to.deep.equal([...Array(100).keys()]);
    a.close();
    b.close();
  });

  it('poll() never consumes and honours timeouts', async () => {
    const [a, b] = Pipe();
    let t = Date.now();
    expect(await b.poll()).to.equal(false); // default: no wait
    expect(b.pollSync()).to.equal(false);
    expect(Date.now() - t).to.be.lessThan(50);
    t = Date.now();
    expect(await within(b.poll(80), 5000, 'poll')).to.equal(false);
    expect(Date.now() - t).to.be.gte(70);
    t = Date.now();
    expect(b.pollSync(60)).to.equal(false);
    expect(Date.now() - t).to.be.gte(50);
    setTimeout(() => a.send('late'), 30);
    expect(await within(b.poll(null), 5000, 'poll')).to.equal(true);
    expect(b.pollSync()).to.equal(true);
    expect(await b.poll(0)).to.equal(true);
    expect(await b.recv()).to.equal('late');
    expect(b.pollSync(0)).to.equal(false);
    a.close();
    b.close();
  });

  it('EOF after the peer closes: recv, recvSync, pending recv and recvBytes', async () => {
    const [a, b] = Pipe();
    const pending = b.recv();
    a.send('last');
    a.close();
    expect(await pending).to.equal('last');
    await expectRejects(b.recv(), (e) => expect(e.name).to.equal('EOFError'));
    expect(() => b.recvSync()).to.throw().with.property('name', 'EOFError');
    await expectRejects(b.recvBytes(), (e) => expect(e).to.be.instanceOf(mp.EOFError));
    expect(await b.poll()).to.equal(true); // EOF is readable, as in Python
    b.close();
    const [c, d] = Pipe();
    const p = d.recv();
    setTimeout(() => c.close(), 20);
    await expectRejects(within(p, 5000, 'pending recv'), (e) => expect(e.name).to.equal('EOFError'));
    d.close();
  });

  it('recvBytesInto: offset, BufferTooShort carrying the message, stream stays usable', async () => {
    const [a, b] = Pipe();
    a.sendBytes(Buffer.from('hello world'));
    const into = Buffer.alloc(20, 0x2e);
    expect(await b.recvBytesInto(into, 3)).to.equal(11);
    expect(into.toString()).to.equal('...hello world......');
    a.sendBytes(Buffer.from('0123456789'));
    try {
      await b.recvBytesInto(Buffer.alloc(4));
      expect.fail('no BufferTooShort');
    } catch (e) {
      expect(e).to.be.instanceOf(mp.BufferTooShort);
      expect((e as mp.BufferTooShort).data.toString()).to.equal('0123456789');
    }
    a.sendBytes(Buffer.alloc(100_000, 1));
    expect(() => b.recvBytesIntoSync(Buffer.alloc(10))).to.throw(mp.BufferTooShort).with.property('data').with.length(100_000);
    const arr = new Int32Array([1, 2, 3, 4]);
    a.sendBytes(arr, 1, 2); // items, as Python counts them
    const out = new Int32Array(4);
    expect(b.recvBytesIntoSync(out, 4)).to.equal(8);
    expect([...out]).to.deep.equal([0, 2, 3, 0]);
    expect(() => a.sendBytes(Buffer.alloc(2), 3)).to.throw(RangeError);
    expect(() => a.sendBytes(Buffer.alloc(2), 1, 2)).to.throw(RangeError);
    expect(() => b.recvBytesIntoSync(Buffer.alloc(2), 3)).to.throw(RangeError, /offset too large/);
    a.sendBytes(Buffer.alloc(0));
    expect((await b.recvBytes()).length).to.equal(0);
    a.close();
    b.close();
  });

  it('maxLength exceeded makes the connection unusable with a clear error', async () => {
    const [a, b] = Pipe();
    a.sendBytes(Buffer.alloc(100));
    await expectRejects(b.recvBytes(10), (e) => expect(e.message).to.match(/exceeds maxLength 10.*out of sync/));
    a.sendBytes(Buffer.from('x'));
    expect(() => b.recvBytesSync()).to.throw(/out of sync/);
    expect(() => b.recvBytesSync(-1)).to.throw(RangeError, /negative maxLength/);
    a.close();
    b.close();
  });

  it('bad frames: negative and huge lengths, truncated frames, undeserializable bytes', async () => {
    // negative
    let [a, b] = Pipe();
    writeRaw(a, rawFrame(-5));
    expect(() => b.recvBytesSync()).to.throw(/negative.*out of sync/);
    a.close(); b.close();
    // huge (8-byte form announcing 2^60): no allocation of the announced size
    [a, b] = Pipe();
    const h = Buffer.alloc(12);
    h.writeInt32BE(-1, 0);
    h.writeBigUInt64BE(1n << 60n, 4);
    writeRaw(a, h);
    await expectRejects(b.recv(), (e) => expect(e.message).to.match(/announced .* bytes.*out of sync/));
    a.close(); b.close();
    // huge 4-byte length, truncated: memory grows only with what arrives
    [a, b] = Pipe();
    writeRaw(a, rawFrame(0x7ffffff0, Buffer.alloc(1000)));
    a.close();
    const before = process.memoryUsage().arrayBuffers;
    expect(() => b.recvBytesSync()).to.throw(/end of file during a message \(1000 of 2147483632/);
    expect(process.memoryUsage().arrayBuffers - before).to.be.lessThan(64 * 1024 * 1024);
    b.close();
    // truncated header
    [a, b] = Pipe();
    writeRaw(a, Buffer.from([0, 0]));
    a.close();
    await expectRejects(b.recvBytes(), (e) => expect(e.message).to.match(/end of file during a message/));
    b.close();
    // undeserializable bytes: a clear error, and the stream stays in sync
    [a, b] = Pipe();
    a.sendBytes(Buffer.from([0, 1, 0xff, 0xff, 0xff]));
    a.sendBytes(Buffer.concat([Buffer.from([0, 2]), Buffer.from('{"not json')])); // the JSON form, cut short
    a.sendBytes(Buffer.from('x'));
    a.send('after');
    await expectRejects(b.recv(), (e) => expect(e.name).to.equal('DeserializationError'));
    expect(() => b.recvSync()).to.throw(/could not deserialize a message of 12 bytes/).with.property('name', 'DeserializationError');
    expect(() => b.recvSync()).to.throw(/too short/);
    expect(b.recvSync()).to.equal('after');
    a.close(); b.close();
  });

  it('fuzz: random frames and random bytes give only clean errors (bounded)', async function () {
    this.timeout(30_000);
    const rng = crypto.createHash('sha256');
    let seed = 0;
    const rand = (n: number) => {
      rng.update(String(seed++));
      return crypto.createHash('sha256').update(String(seed) + 'x').digest().readUInt32BE(0) % n;
    };
    const end = Date.now() + 4000;
    let rounds = 0;
    const outcomes = new Map<string, number>();
    while (Date.now() < end && rounds < 400) {
      rounds++;
      const [a, b] = Pipe();
      const parts: Buffer[] = [];
      const kind = rand(4);
      for (let i = 0; i < 1 + rand(4); i++) {
        if (kind === 0) parts.push(crypto.randomBytes(rand(64)));
        else if (kind === 1) {
          const body = crypto.randomBytes(rand(200));
          const len = rand(3) === 0 ? body.length + rand(50) - 25 : body.length;
          parts.push(rawFrame(len, body));
        } else if (kind === 2) {
          const body = crypto.randomBytes(rand(100) + 1);
          body[0] = rand(3); // fds claimed
          body[1] = rand(2);
          parts.push(rawFrame(body.length, body));
        } else {
          const h = Buffer.alloc(12);
          h.writeInt32BE(-1, 0);
          h.writeBigUInt64BE(BigInt(rand(1 << 30)) * BigInt(rand(1 << 30) + 1), 4);
          parts.push(h, crypto.randomBytes(rand(100)));
        }
      }
      writeRaw(a, Buffer.concat(parts));
      a.close();
      for (let i = 0; i < 10; i++) {
        try {
          const useAsync = rand(2) === 0;
          const op = rand(3);
          if (op === 0) useAsync ? await b.recv() : b.recvSync();
          else if (op === 1) useAsync ? await b.recvBytes(rand(2) ? 150 : undefined) : b.recvBytesSync();
          else useAsync ? await b.recvBytesInto(Buffer.alloc(rand(300))) : b.recvBytesIntoSync(Buffer.alloc(rand(300)));
          outcomes.set('ok', (outcomes.get('ok') ?? 0) + 1);
        } catch (e) {
          expect(e).to.be.instanceOf(Error);
          const name = (e as Error).name;
          expect(['EOFError', 'DeserializationError', 'Error', 'BufferTooShort', 'TypeError', 'RangeError']).to.include(name);
          outcomes.set(name, (outcomes.get(name) ?? 0) + 1);
          if (name === 'EOFError') break;
        }
      }
      b.close();
    }
    expect(rounds).to.be.greaterThan(20);
    expect(outcomes.get('EOFError') ?? 0).to.be.greaterThan(0);
  });

  it('wait() over Connections, raw fds and a timeout; waitSync', async () => {
    const [a, b] = Pipe();
    const [c, d] = Pipe();
    const [r, w] = native.pipe();
    try {
      expect(await wait([b, d, r], 0)).to.deep.equal([]);
      let t = Date.now();
      expect(await within(wait([b, d, r], 60), 5000, 'wait')).to.deep.equal([]);
      expect(Date.now() - t).to.be.gte(50);
      setTimeout(() => c.send('x'), 20);
      expect(await within(wait([b, d, r]), 5000, 'wait')).to.deep.equal([d]);
      native.write(w, Buffer.from('z'));
      expect(await wait([b, d, r], 1000)).to.deep.equal([d, r]);
      expect(waitSync([b, d, r], 0)).to.deep.equal([d, r]);
      expect(await d.recv()).to.equal('x');
      t = Date.now();
      expect(waitSync([b, d], 40)).to.deep.equal([]);
      expect(Date.now() - t).to.be.gte(30);
      a.close();
      expect(waitSync([b, d], 1000)).to.deep.equal([b]); // EOF counts as ready
    } finally {
      for (const x of [a, b, c, d]) x.close();
      native.close(r);
      native.close(w);
    }
  });

  it('Connections sent over a Connection arrive working; the sender keeps its end', async () => {
    const [a, b] = Pipe();
    const [x, y] = Pipe();
    const fdsBefore = openFdCount();
    a.send({ conn: x, list: [y] });
    const got = (await within(b.recv(), 5000, 'recv')) as { conn: Connection; list: Connection[] };
    expect(got.conn).to.be.instanceOf(Connection);
    expect(got.conn.fileno()).to.not.equal(x.fileno());
    got.conn.send('through the copy');
    expect(y.recvSync()).to.equal('through the copy');
    got.list[0].send('other way');
    expect(x.recvSync()).to.equal('other way');
    got.conn.close();
    got.list[0].close();
    expect(openFdCount()).to.equal(fdsBefore);
    x.send('sender end still open');
    expect(y.recvSync()).to.equal('sender end still open');
    const [r, w] = Pipe({ duplex: false });
    expect(() => w.send(a)).to.throw(TypeError, /simplex/);
    for (const c of [a, b, x, y, r, w]) c.close();
  });

  it('16 MiB messages with an async reader in this process', async () => {
    const [a, b] = Pipe();
    const big = crypto.randomBytes(16 * 1024 * 1024);
    const p = b.recvBytes();
    // send blocks until the reader has taken it (as Python's), so in one process the writer must yield to
    // the event loop: raw non-blocking writes in slices let the async reader run in between.
    native.setNonblock(a.fileno(), true);
    const h = Buffer.alloc(4);
    h.writeInt32BE(big.length, 0);
    const all = Buffer.concat([h, big]);
    let off = 0;
    await new Promise<void>((resolve) => {
      const pump = () => {
        while (off < all.length) {
          const n = native.write(a.fileno(), all, off);
          if (n === 0) return setImmediate(pump);
          off += n;
        }
        resolve();
      };
      pump();
    });
    const got = await within(p, 10_000, 'recvBytes 16 MiB');
    expect(got.equals(big)).to.equal(true);
    a.close();
    b.close();
  });

  describe('Listener / Client', () => {
    it('Unix path, without authkey; the socket file goes away on close', async () => {
      const address = tmpFile('sock');
      const l = new Listener({ address });
      expect(l.address).to.equal(address);
      expect(fs.existsSync(address)).to.equal(true);
      const [client, server] = await within(Promise.all([Client(address), l.accept()]), 5000, 'connect');
      client.send({ hi: 1 });
      expect(await server.recv()).to.deep.equal({ hi: 1 });
      server.sendBytes(Buffer.from('bytes'));
      expect(client.recvBytesSync().toString()).to.equal('bytes');
      client.close();
      server.close();
      l.close();
      expect(fs.existsSync(address)).to.equal(false);
      const dflt = new Listener();
      expect(dflt.address).to.be.a('string');
      dflt.close();
    });

    it('Linux abstract name and TCP port 0 with authkey', async function () {
      const authkey = crypto.randomBytes(32);
      const addresses: mp.connection.Address[] = [['127.0.0.1', 0], ['localhost', 0]];
      if (process.platform === 'linux') addresses.unshift(`\0mp-test-${process.pid}-${Date.now()}`);
      for (const address of addresses) {
        const l = new Listener(address, { authkey });
        const addr = l.address;
        if (Array.isArray(address)) {
          expect(addr[1]).to.be.a('number').greaterThan(0);
        } else expect(addr).to.equal(address);
        const [client, server] = await within(Promise.all([Client(addr, { authkey }), l.accept()]), 5000, 'connect');
        client.send('over ' + JSON.stringify(addr));
        expect(await server.recv()).to.equal('over ' + JSON.stringify(addr));
        server.send('back');
        expect(client.recvSync()).to.equal('back');
        client.close();
        server.close();
        l.close();
      }
    });

    it('a wrong authkey raises AuthenticationError on both sides', async () => {
      const l = new Listener(['127.0.0.1', 0], { authkey: Buffer.from('right') });
      const results = await within(Promise.allSettled([Client(l.address, { authkey: Buffer.from('wrong') }), l.accept()]), 5000, 'handshake');
      for (const r of results) {
        expect(r.status).to.equal('rejected');
        expect((r as PromiseRejectedResult).reason).to.be.instanceOf(mp.AuthenticationError);
      }
      // a client without a key meets a challenge it does not answer
      const noKey = await Client(l.address);
      const acc = l.accept();
      noKey.close();
      await expectRejects(within(acc, 5000, 'accept'), (e) => expect(e.name).to.equal('EOFError'));
      l.close();
      await expectRejects(l.accept(), (e) => expect(e.message).to.match(/closed/));
    });
  });

  describe('interop with a real Python 3.13 peer', function () {
    this.timeout(30_000);
    const python = findPython();
    const authkey = crypto.randomBytes(32);

    before(function () {
      if (!python) this.skip();
    });

    function startPython(args: string[]): { child: ChildProcess; firstLine: Promise<string>; done: Promise<{ code: number | null; out: string }> } {
      const child = spawn(python!, [path.join(fixtures, '..', '..', '..', 'test', 'fixtures', 'conn_peer.py'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      let gotLine: (l: string) => void;
      const firstLine = new Promise<string>((r) => { gotLine = r; });
      child.stdout!.on('data', (d) => {
        out += d;
        const nl = out.indexOf('\n');
        if (nl >= 0) gotLine(out.slice(0, nl));
      });
      child.stderr!.on('data', (d) => { err += d; });
      const done = new Promise<{ code: number | null; out: string }>((resolve) => child.on('exit', (code) => resolve({ code, out: out + err })));
      return { child, firstLine, done };
    }

    async function echoChecks(c: Connection): Promise<void> {
      c.sendBytes(Buffer.from('hello'));
      expect((await c.recvBytes()).toString()).to.equal('py:hello');
      const big = crypto.randomBytes(3 * 1024 * 1024);
      c.sendBytes(Buffer.concat([Buffer.from('raw:'), big]));
      expect((await c.recvBytes()).equals(big)).to.equal(true);
      c.sendBytes(Buffer.from('sync'));
      expect(c.recvBytesSync().toString()).to.equal('py:sync');
      c.sendBytes(Buffer.from('quit'));
    }

    it('our Listener (TCP) <- Python Client, authenticated', async () => {
      const l = new Listener(['127.0.0.1', 0], { authkey });
      const py = startPython(['client', JSON.stringify(l.address), authkey.toString('hex')]);
      const c = await within(l.accept(), 10_000, 'accept');
      await echoChecks(c);
      expect((await within(py.done, 10_000, 'python exit')).code).to.equal(0);
      c.close();
      l.close();
    });

    it('our Listener (Unix) <- Python Client, authenticated', async () => {
      const l = new Listener({ address: tmpFile('py'), authkey });
      const py = startPython(['client', JSON.stringify(l.address), authkey.toString('hex')]);
      const c = await within(l.accept(), 10_000, 'accept');
      await echoChecks(c);
      expect((await within(py.done, 10_000, 'python exit')).code).to.equal(0);
      c.close();
      l.close();
    });

    it('Python Listener <- our Client, authenticated (TCP and Unix)', async () => {
      for (const family of ['AF_INET', 'AF_UNIX']) {
        const py = startPython(['server', family, authkey.toString('hex')]);
        const address = JSON.parse(await within(py.firstLine, 10_000, 'python address')) as mp.connection.Address;
        const c = await within(Client(address, { authkey }), 10_000, 'connect');
        await echoChecks(c);
        expect((await within(py.done, 10_000, 'python exit')).code).to.equal(0);
        c.close();
      }
    });

    it('wrong keys fail on both sides against Python', async () => {
      const l = new Listener(['127.0.0.1', 0], { authkey });
      const py = startPython(['client', JSON.stringify(l.address), crypto.randomBytes(8).toString('hex')]);
      await expectRejects(within(l.accept(), 10_000, 'accept'), (e) => expect(e).to.be.instanceOf(mp.AuthenticationError));
      const r = await within(py.done, 10_000, 'python exit');
      expect(r.code).to.equal(3);
      expect(r.out).to.match(/AuthenticationError/);
      l.close();
      const py2 = startPython(['server', 'AF_INET', authkey.toString('hex')]);
      const address = JSON.parse(await within(py2.firstLine, 10_000, 'python address')) as mp.connection.Address;
      await expectRejects(within(Client(address, { authkey: Buffer.from('nope') }), 10_000, 'connect'),
        (e) => expect(e).to.be.instanceOf(mp.AuthenticationError));
      expect((await within(py2.done, 10_000, 'python exit')).code).to.equal(3);
    });
  });
});

for (const method of methodsUnderTest()) {
  describe(`connection: between processes under '${method}'`, function () {
    this.timeout(30_000);
    let ctx: mp.BaseContext;
    before(() => {
      ctx = mp.getContext(method);
    });

    async function run(target: (...a: any[]) => unknown, args: unknown[]): Promise<mp.Process> {
      const p = new ctx.Process({ target, args });
      p.start();
      return p;
    }

    it('duplex Pipe to a child: sync and async echo, ordering, 16 MiB messages', async () => {
      for (const target of [targets.echoSync, targets.echoAsync]) {
        const [mine, theirs] = Pipe();
        const p = await run(target, [theirs]);
        theirs.close();
        for (let i = 0; i < 200; i++) mine.send({ i });
        for (let i = 0; i < 200; i++) expect(await within(mine.recv(), 10_000, 'echo')).to.deep.equal({ i });
        const big = crypto.randomBytes(16 * 1024 * 1024);
        mine.send(big);
        const back = (await within(mine.recv(), 20_000, '16 MiB echo')) as Uint8Array;
        expect(Buffer.from(back).equals(big)).to.equal(true);
        mine.send(null);
        await within(p.join(), 10_000, 'join');
        expect(p.exitCode).to.equal(0);
        await expectRejects(mine.recv(), (e) => expect(e.name).to.equal('EOFError'));
        mine.close();
      }
    });

    it('bytes echo of 16 MiB with recvBytesSync', async () => {
      const [mine, theirs] = Pipe();
      const p = await run(targets.echoBytes, [theirs]);
      theirs.close();
      const big = crypto.randomBytes(16 * 1024 * 1024);
      mine.sendBytes(big);
      expect(mine.recvBytesSync().equals(big)).to.equal(true);
      mine.sendBytes(Buffer.alloc(0));
      await within(p.join(), 10_000, 'join');
      mine.close();
    });

    it('recvBytesInto (sync and async) with large messages: into the target at an offset, or BufferTooShort', async () => {
      const [mine, theirs] = Pipe();
      const p = await run(targets.echoBytes, [theirs]);
      theirs.close();
      const target = Buffer.alloc(5 * 1024 * 1024 + 7, 0xee);
      for (const size of [32 * 1024 - 1, 32 * 1024, 64 * 1024, 3 * 1024 * 1024 + 5]) {
        for (const useAsync of [false, true]) {
          const msg = crypto.randomBytes(size);
          target.fill(0xee);
          mine.sendBytes(msg);
          const n = useAsync ? await within(mine.recvBytesInto(target, 7), 10_000, 'recvBytesInto')
            : mine.recvBytesIntoSync(target, 7);
          expect(n, `${size} bytes, async ${useAsync}`).to.equal(size);
          expect(target.subarray(7, 7 + size).equals(msg)).to.equal(true);
          expect(target[6]).to.equal(0xee);
          expect(target[7 + size]).to.equal(0xee);
        }
      }
      const big = crypto.randomBytes(1024 * 1024);
      mine.sendBytes(big);
      expect(() => mine.recvBytesIntoSync(target.subarray(0, 1000))).to.throw(mp.BufferTooShort)
        .with.property('data').that.satisfies((d: Buffer) => d.equals(big));
      mine.sendBytes(big.subarray(0, 40_000));
      expect(mine.recvBytesSync().equals(big.subarray(0, 40_000))).to.equal(true);
      mine.sendBytes(Buffer.alloc(0));
      await within(p.join(), 10_000, 'join');
      mine.close();
    });

    it('simplex Pipe: the child writes, the parent reads until EOF', async () => {
      const [r, w] = Pipe({ duplex: false });
      const p = await run(targets.sendAll, [w, ['a', 'b', { c: 3 }]]);
      w.close();
      expect(await within(r.recv(), 10_000, 'recv')).to.equal('a');
      expect(r.recvSync()).to.equal('b');
      expect(await r.recv()).to.deep.equal({ c: 3 });
      await expectRejects(within(r.recv(), 10_000, 'eof'), (e) => expect(e.name).to.equal('EOFError'));
      await within(p.join(), 10_000, 'join');
      r.close();
    });

    it('a Connection sent over a Connection to a child', async () => {
      const [mine, theirs] = Pipe();
      const [x, y] = Pipe();
      const p = await run(targets.useReceivedConnection, [theirs]);
      theirs.close();
      mine.send(y);
      expect(await within(x.recv(), 10_000, 'via passed')).to.deep.equal({ from: 'child', via: 'received connection' });
      x.send('reply');
      expect(await within(mine.recv(), 10_000, 'result')).to.deep.equal({ ok: true, back: 'reply' });
      y.send('parent end still works');
      expect(x.recvSync()).to.equal('parent end still works');
      await within(p.join(), 10_000, 'join');
      for (const c of [mine, x, y]) c.close();
    });

    it('closing in the child does not break the parent, and the reverse', async () => {
      const [a, b] = Pipe();
      const p = await run(targets.closeAndExit, [b]);
      await within(p.join(), 10_000, 'join');
      expect(p.exitCode).to.equal(0);
      a.send('still here');
      expect(await within(b.recv(), 5000, 'recv')).to.equal('still here');
      // the parent closes its copy right after start; the child's copy still works
      const [m, t] = Pipe();
      const q = await run(targets.echoSync, [t]);
      t.close();
      m.send('x');
      expect(await within(m.recv(), 10_000, 'echo')).to.equal('x');
      m.send(null);
      await within(q.join(), 10_000, 'join');
      for (const c of [a, b, m]) c.close();
    });

    it('wait() over a Connection, a Process and its sentinel', async () => {
      const [inbox, toChild] = Pipe();
      const [fromChild, outbox] = Pipe();
      const p = await run(targets.answerLater, [inbox, outbox, 50]);
      inbox.close();
      outbox.close();
      expect(await wait([fromChild, p], 0)).to.deep.equal([]);
      toChild.send('ping');
      const first = await within(wait([fromChild, p]), 10_000, 'wait');
      expect(first).to.include(fromChild);
      expect(await fromChild.recv()).to.equal('ping');
      const ended = await within(wait([p.sentinel, p]), 10_000, 'wait for exit');
      expect(ended).to.deep.equal([p.sentinel, p]);
      await p.join();
      for (const c of [toChild, fromChild]) c.close();
    });

    if (process.platform !== 'win32') it("a child's exit unlinks its own Unix socket Listener, not its parent's", async () => {
      const mine = new Listener(tmpFile('parent.sock'), { family: 'AF_UNIX' });
      const theirs = tmpFile('child.sock');
      const p = await run(targets.listenAndLeave, [theirs]);
      await within(p.join(), 10_000, 'join');
      expect(p.exitCode).to.equal(0);
      expect(fs.existsSync(theirs)).to.equal(false);
      expect(fs.existsSync(mine.address as string)).to.equal(true);
      mine.close();
      expect(fs.existsSync(mine.address as string)).to.equal(false);
    });

    it("never resumes the parent's pending async waits in the child", async () => {
      const file = tmpFile('resumed');
      const [a, b] = Pipe();
      const waiting = wait([a], 10_000).then(() => fs.appendFileSync(file, `${process.pid}\n`));
      await null; // start() inside a continuation: under 'fork' it forks from the loop, after wait() began
      const p = await run(targets.sendAndLinger, [b, 'x', 300]);
      await within(waiting, 10_000, 'wait');
      await within(p.join(), 10_000, 'join');
      expect(p.exitCode).to.equal(0);
      expect(fs.readFileSync(file, 'utf8').trim().split('\n')).to.deep.equal([String(process.pid)]);
      a.close();
      b.close();
    });

    it('a child connects back to a Listener with an authkey', async () => {
      const authkey = crypto.randomBytes(32);
      const l = new Listener(['127.0.0.1', 0], { authkey });
      const p = await run(targets.clientEcho, [l.address, authkey]);
      const c = await within(l.accept(), 10_000, 'accept');
      c.send({ echo: [1, 2] });
      expect(await within(c.recv(), 10_000, 'echo')).to.deep.equal({ echo: [1, 2] });
      await within(p.join(), 10_000, 'join');
      expect(p.exitCode).to.equal(0);
      c.close();
      l.close();
    });
  });
}

describe('connection: named pipe addresses (AF_PIPE)', () => {
  const isWindows = process.platform === 'win32';

  it('addressType: two leading backslashes make a named pipe, as Python\'s address_type', () => {
    expect(mp.connection.addressType('\\\\.\\pipe\\x')).to.equal('AF_PIPE');
    expect(mp.connection.addressType('\\\\server\\pipe\\name')).to.equal('AF_PIPE');
    expect(mp.connection.addressType('\\single-backslash')).to.equal('AF_UNIX');
    expect(mp.connection.addressType('/tmp/mp.sock')).to.equal('AF_UNIX');
    expect(mp.connection.addressType('\0abstract')).to.equal('AF_UNIX');
    expect(mp.connection.addressType(['127.0.0.1', 80])).to.equal('AF_INET');
    expect(mp.connection.addressType(['::1', 80])).to.equal('AF_INET6');
    expect(() => mp.connection.addressType(42 as never)).to.throw(TypeError, /named pipe/);
  });

  it("arbitraryAddress('AF_PIPE') is \\\\.\\pipe\\pyc-<pid>-<counter>-<random>, fresh each time", () => {
    const a = mp.connection.arbitraryAddress('AF_PIPE') as string;
    const b = mp.connection.arbitraryAddress('AF_PIPE') as string;
    const shape = /^\\\\\.\\pipe\\pyc-(\d+)-(\d+)-[a-z0-9_]{8}$/;
    const ma = shape.exec(a);
    const mb = shape.exec(b);
    expect(ma, a).to.not.equal(null);
    expect(mb, b).to.not.equal(null);
    expect(Number(ma![1])).to.equal(process.pid);
    expect(Number(mb![2])).to.equal(Number(ma![2]) + 1);
    expect(a).to.not.equal(b);
    expect(mp.connection.addressType(a)).to.equal('AF_PIPE');
  });

  it('the default family is AF_PIPE on Windows only (Python\'s default_family)', () => {
    const l = new Listener();
    try {
      expect(l.family).to.equal(isWindows ? 'AF_PIPE' : 'AF_UNIX');
      expect(mp.connection.addressType(l.address)).to.equal(l.family);
    } finally {
      l.close();
    }
    expect(() => new Listener({ family: 'AF_BOGUS' as never })).to.throw(RangeError, /unsupported family AF_BOGUS/);
  });

  if (!isWindows) {
    it('Listener and Client on a named pipe fail with a clear error off Windows', async () => {
      const name = mp.connection.arbitraryAddress('AF_PIPE');
      const clear = /named pipes \(AF_PIPE.*exist only on Windows/;
      expect(() => new Listener(name)).to.throw(Error, clear);
      expect(() => new Listener({ address: name, authkey: Buffer.from('k') })).to.throw(Error, clear);
      expect(() => new Listener({ family: 'AF_PIPE' })).to.throw(Error, clear);
      await expectRejects(Client(name), (e) => expect(e.message).to.match(clear));
      await expectRejects(Client(name, { family: 'AF_PIPE' }), (e) => expect(e.message).to.match(clear));
    });
  } else {
    it('Listener/Client over a named pipe with an authkey, async reads, a wrong key', async () => {
      const authkey = Buffer.from('named pipe key');
      const l = new Listener({ authkey });
      const [client, server] = await within(Promise.all([Client(l.address, { authkey }), l.accept()]), 10_000, 'connect');
      client.send({ n: 1 });
      expect(await within(server.recv(), 10_000, 'recv')).to.deep.equal({ n: 1 });
      expect(await within(mp.connection.wait([client], 50), 5000, 'wait')).to.deep.equal([]);
      server.sendBytes(Buffer.from('bytes'));
      expect((await within(client.recvBytes(), 10_000, 'recvBytes')).toString()).to.equal('bytes');
      const accepting = l.accept();
      await expectRejects(within(Client(l.address, { authkey: Buffer.from('wrong') }), 10_000, 'client'),
        (e) => expect(e.name).to.equal('AuthenticationError'));
      await expectRejects(within(accepting, 10_000, 'accept'), (e) => expect(e.name).to.equal('AuthenticationError'));
      for (const c of [client, server]) c.close();
      l.close();
    });

    it('Listener/Client over a named pipe, and a Connection sent over it', async () => {
      const l = new Listener();
      expect(l.family).to.equal('AF_PIPE');
      expect(() => l.fileno()).to.throw(Error, /no fd/);
      expect(() => new Listener(l.address)).to.throw(Error, /EADDRINUSE/);
      const [client, server] = await within(Promise.all([Client(l.address), l.accept()]), 10_000, 'connect');
      client.send({ hi: 1 });
      expect(server.recvSync()).to.deep.equal({ hi: 1 });
      const [a, b] = Pipe();
      server.send(a);
      const a2 = client.recvSync() as Connection;
      a2.send('through the passed end');
      expect(b.recvSync()).to.equal('through the passed end');
      for (const c of [a, a2, b, client, server]) c.close();
      const pending = l.accept();
      l.close();
      await expectRejects(pending, (e) => expect((e as NodeJS.ErrnoException).code).to.equal('ECANCELED'));
      await expectRejects(Client(l.address), (e) => expect((e as NodeJS.ErrnoException).code).to.equal('ENOENT'));
    });
  }
});
