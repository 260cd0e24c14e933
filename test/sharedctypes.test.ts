import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as mp from '../src/index';
import { heap, shm as shmNative } from '../src/heap';
import { native } from '../src/native';
import { dumps, loads } from '../src/reduction';
import * as t from './fixtures/shm_targets';
import { methodsUnderTest, openFdCount, within } from './helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const hasLocks = typeof (mp as Record<string, unknown>).RLock === 'function';

/** GCs until `done()` (finalizers run between rounds). */
async function collectUntil(done: () => boolean, rounds = 40): Promise<void> {
  for (let i = 0; i < rounds && !done(); i++) {
    gc();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 5));
  }
}

function devShmCount(): number {
  return fs.existsSync('/dev/shm') ? fs.readdirSync('/dev/shm').length : 0;
}

// Values written per typecode, and what reads back (wrapped as C would).
const roundTrips: Array<[mp.Typecode, unknown, unknown]> = [
  ['b', 300, 44], ['b', -129, 127], ['B', -1, 255], ['B', 256 + 7, 7],
  ['h', 40000, -25536], ['H', -1, 65535], ['i', 2 ** 31, -(2 ** 31)], ['i', -5, -5],
  ['I', -1, 2 ** 32 - 1], ['l', 2n ** 63n, -(2n ** 63n)], ['L', -1n, 2n ** 64n - 1n],
  ['q', 2n ** 64n + 5n, 5n], ['q', -(2n ** 62n), -(2n ** 62n)], ['Q', 2n ** 64n - 1n, 2n ** 64n - 1n], ['Q', 7, 7n],
  ['f', 0.1, Math.fround(0.1)], ['f', 1e40, Infinity], ['d', Math.PI, Math.PI], ['d', -0.5, -0.5],
];

describe('sharedctypes (in this process)', () => {
  it('every typecode is zero-filled and round-trips, wrapping on overflow', () => {
    for (const [tc, write, read] of roundTrips) {
      const v = mp.RawValue(tc);
      const zero = tc === 'q' || tc === 'Q' || tc === 'l' || tc === 'L' ? 0n : 0;
      expect(v.value, tc).to.equal(zero);
      (v as { value: unknown }).value = write;
      expect(v.value, `${tc} ${String(write)}`).to.equal(read);
      const a = mp.RawArray(tc, 3);
      (a as unknown as unknown[])[1] = typeof zero === 'bigint' ? BigInt(write as number) : write;
      expect((a as unknown as unknown[])[1], `array ${tc}`).to.equal(read);
    }
  });

  it("'c' holds bytes: Value as a 1-byte Buffer, Array with value/raw", () => {
    const c = mp.RawValue('c', 'x');
    expect(c.value).to.deep.equal(Buffer.from('x'));
    c.value = Buffer.from('y');
    expect(c.value).to.deep.equal(Buffer.from('y'));
    expect(() => { c.value = Buffer.from('yz'); }).to.throw(TypeError);
    const a = mp.RawArray('c', 'hello');
    expect(a.value).to.deep.equal(Buffer.from('hello'));
    a.value = Buffer.from('hi');
    expect(a.value).to.deep.equal(Buffer.from('hi'));
    expect(a.raw).to.deep.equal(Buffer.from('hi\0lo'));
    expect(() => { a.value = Buffer.from('toolong'); }).to.throw(RangeError);
  });

  it('64-bit typecodes read as BigInt; l/L are 64-bit on this platform', () => {
    expect(mp.RawArray('q', 2).getObj()).to.be.instanceOf(BigInt64Array);
    expect(mp.RawArray('Q', 2).getObj()).to.be.instanceOf(BigUint64Array);
    expect(mp.RawArray('l', 2).getObj()).to.be.instanceOf(process.platform === 'win32' ? Int32Array : BigInt64Array);
    expect(mp.RawValue('q', 5).value).to.equal(5n);
  });

  it('RawArray is a typed array over shared memory; getObj() is the view', () => {
    const a = mp.RawArray('d', [1, 2, 3]);
    expect(a).to.be.instanceOf(Float64Array);
    expect(a.getObj()).to.equal(a);
    expect(a.length).to.equal(3);
    expect([...a.slice(1)]).to.deep.equal([2, 3]);
    a.set([7, 8], 1);
    expect([...a]).to.deep.equal([1, 7, 8]);
    expect(a.typecode).to.equal('d');
    const big = mp.RawArray('i', 100_000);
    expect(big.every((x) => x === 0)).to.equal(true);
  });

  it('rejects bad typecodes, sizes and values with clear errors', () => {
    expect(() => mp.RawValue('x' as mp.Typecode)).to.throw(TypeError, /unknown typecode/);
    expect(() => mp.RawArray('i', -1)).to.throw(RangeError);
    expect(() => mp.RawValue('i', 1.5)).to.throw(TypeError, /integer/);
    expect(() => mp.RawValue('q', 1.5)).to.throw(TypeError, /integer/);
    expect(() => mp.RawValue('d', 'x' as never)).to.throw(TypeError);
    expect(() => mp.Value('i', 0, { lock: 3 as never })).to.throw(TypeError, /lock/);
  });

  it('Value/Array with lock: false are the raw objects (no getLock)', () => {
    const v = mp.Value('i', 3, { lock: false });
    expect(v).to.be.instanceOf(mp.RawValue);
    expect((v as unknown as Record<string, unknown>).getLock).to.equal(undefined);
    const a = mp.Array('i', 4, { lock: false });
    expect(a).to.be.instanceOf(Int32Array);
  });

  it('Value/Array take a given lock; every access holds it', () => {
    let depth = 0;
    let acquired = 0;
    const lock = {
      acquire: async () => { depth++; acquired++; return true; },
      acquireSync: () => { depth++; acquired++; return true; },
      release: () => { if (depth-- <= 0) throw new Error('over-release'); },
    };
    const v = mp.Value('d', 1.5, { lock });
    expect(v.getLock()).to.equal(lock);
    v.value = 2.5;
    expect(v.value).to.equal(2.5);
    expect(acquired).to.equal(2);
    const a = mp.Array('i', [1, 2, 3], { lock });
    a[1] = 9;
    expect(a[1]).to.equal(9);
    expect(a.length).to.equal(3);
    expect([...a.slice(0, 2)]).to.deep.equal([1, 9]);
    expect(a.toArray()).to.deep.equal([1, 9, 3]);
    expect(a.getObj()).to.be.instanceOf(Int32Array);
    expect(a[5]).to.equal(undefined);
    expect(() => { a[5] = 1; }).to.throw(RangeError);
    expect(depth).to.equal(0);
    expect(acquired).to.be.greaterThan(4);
  });

  it('Value/Array default to an RLock', function () {
    if (!hasLocks) this.skip();
    const v = mp.Value('i', 1);
    const lock = v.getLock();
    expect(lock.acquireSync()).to.equal(true);
    v.value = 5; // re-entrant
    lock.release();
    expect(v.value).to.equal(5);
  });

  it('small Values share arenas: 1,000 Values cost a few fds, not 1,000', () => {
    const before = openFdCount();
    const keep = Array.from({ length: 1000 }, (_, i) => mp.RawValue('d', i));
    expect(openFdCount() - before).to.be.lessThan(10);
    expect(keep[999].value).to.equal(999);
  });

  it('refuses to travel over a Connection/Queue (inheritance only, as Python)', () => {
    const v = mp.RawValue('i', 1);
    expect(() => dumps([v], 'connection', [])).to.throw(TypeError, /inheritance/);
  });

  it('rebuilds in the same process onto the same memory', () => {
    const a = mp.RawArray('i', 4);
    const fds: number[] = [];
    const buf = dumps([a], 'spawn', fds);
    const [b] = loads(buf, 'spawn', fds.map((fd) => native.dup(fd))) as [Int32Array];
    b[2] = 42;
    expect(a[2]).to.equal(42);
  });

  it('leaks nothing: 10,000 Values created and dropped return fds, /dev/shm and arenas', async function () {
    this.timeout(30_000);
    await collectUntil(() => heap.arenaCount === 0);
    const fdsBefore = openFdCount();
    const shmBefore = devShmCount();
    const arenasBefore = heap.arenaCount;
    const mapsBefore = shmNative.shmStats().mappings;
    (function make() {
      for (let i = 0; i < 10_000; i++) {
        const v = mp.Value('q', BigInt(i), { lock: false });
        if (v.value !== BigInt(i)) throw new Error('bad value');
      }
    })();
    expect(devShmCount()).to.equal(shmBefore); // arenas have no name
    await collectUntil(() => heap.arenaCount === arenasBefore && openFdCount() <= fdsBefore &&
      shmNative.shmStats().mappings <= mapsBefore);
    expect(heap.arenaCount).to.equal(arenasBefore);
    expect(openFdCount()).to.equal(fdsBefore);
    expect(devShmCount()).to.equal(shmBefore);
    expect(shmNative.shmStats().mappings).to.be.at.most(mapsBefore);
  });
});

for (const method of methodsUnderTest()) {
  describe(`sharedctypes under '${method}'`, function () {
    this.timeout(30_000);
    const ctx = mp.getContext(method);

    async function run(target: (...a: any[]) => unknown, args: unknown[]): Promise<void> {
      const p = new ctx.Process({ target, args });
      p.start();
      await within(p.join(), 15_000, `${method} child`);
      expect(p.exitCode).to.equal(0);
      p.close();
    }

    it("a child's writes to RawValue/RawArray are seen by the parent after join", async () => {
      const v = mp.RawValue('d');
      const a = mp.RawArray('i', 10);
      await run(t.setValue, [v, 2.25]);
      await run(t.fillSquares, [a]);
      expect(v.value).to.equal(2.25);
      expect([...a]).to.deep.equal([0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
    });

    it('every typecode round-trips through a child, BigInt and wrapping included', async () => {
      const values: Record<string, { value: unknown }> = {};
      const data: Record<string, unknown> = {};
      roundTrips.forEach(([tc, write], i) => {
        values[`${tc}${i}`] = mp.RawValue(tc);
        data[`${tc}${i}`] = write;
      });
      values.c = mp.RawValue('c');
      data.c = Buffer.from('z');
      await run(t.writeAll, [values, data]);
      roundTrips.forEach(([tc, write, read], i) => expect(values[`${tc}${i}`].value, `${tc} ${String(write)}`).to.equal(read));
      expect(values.c.value).to.deep.equal(Buffer.from('z'));
    });

    it('the square_list example: a child fills an Array of squares and a Value sum', async function () {
      if (!hasLocks) this.skip();
      const mylist = [1, 2, 3, 4];
      const result = mp.Array('i', 4);
      const squareSum = mp.Value('i');
      await run(t.squareList, [mylist, result, squareSum]);
      expect(result.toArray()).to.deep.equal([1, 4, 9, 16]);
      expect(squareSum.value).to.equal(30);
    });

    it('examples/square_list prints the tutorial output', async function () {
      if (!hasLocks) this.skip();
      const script = path.resolve(__dirname, '../examples/square_list.js');
      const args = [...(method === 'fork' ? ['--single-threaded'] : []), script, method];
      const out = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, args, { timeout: 15_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
      });
      expect(out).to.equal('Result(in process p1): [1, 4, 9, 16]\nSum of squares(in process p1): 30\n' +
        'Result(in main program): [1, 4, 9, 16]\nSum of squares(in main program): 30\n');
    });

    // A plain object is no process-shared lock: only fork passes it (as-is).
    if (method === 'fork') it('a synchronized Array with a given lock is inherited under fork', async function () {
      const lock = { acquire: async () => true, acquireSync: () => true, release: () => {} };
      const a = mp.Array('i', 5, { lock });
      await run(t.fillSquares, [a]);
      expect(a.toArray()).to.deep.equal([0, 1, 4, 9, 16]);
    });

    it('Atomics.add from two processes on an Int32Array view gives the exact total', async () => {
      const counter = mp.RawArray('i', 1);
      const n = 200_000;
      const ps = [0, 1].map(() => new ctx.Process({ target: t.atomicAdds, args: [counter, n] }));
      ps.forEach((p) => p.start());
      await within(Promise.all(ps.map((p) => p.join())), 20_000, 'atomic adders');
      ps.forEach((p) => expect(p.exitCode).to.equal(0));
      expect(counter[0]).to.equal(2 * n);
    });

    it('a child passes a RawArray on to its own child', async () => {
      const a = mp.RawArray('i', 6);
      await run(t.viaGrandchild, [a, method === 'fork' ? 'fork' : 'spawn']);
      expect([...a]).to.deep.equal([0, 1, 4, 9, 16, 25]);
    });

    it('many Values in one arena and a large Array reach the child', async () => {
      const vs = Array.from({ length: 50 }, () => mp.RawValue('i'));
      const data: Record<string, number> = {};
      const values: Record<string, { value: unknown }> = {};
      vs.forEach((v, i) => { values[i] = v; data[i] = i * 3; });
      await run(t.writeAll, [values, data]);
      vs.forEach((v, i) => expect(v.value).to.equal(i * 3));
      const big = mp.RawArray('d', 2_000_000);
      big.fill(0.5);
      const out = mp.RawValue('d');
      await run(t.sumInto, [big, out]);
      expect(out.value).to.equal(1_000_000);
    });
  });
}
