import { expect } from 'chai';
import { execFile, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as mp from '../src/index';
import { shm as shmNative } from '../src/heap';
import { native } from '../src/native';
import { dumps, loads } from '../src/reduction';
import * as t from './fixtures/shm_targets';
import { methodsUnderTest, openFdCount, within } from './helpers';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

async function collectUntil(done: () => boolean, rounds = 40): Promise<void> {
  for (let i = 0; i < rounds && !done(); i++) {
    gc();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 5));
  }
}

function devShm(): string[] {
  return fs.existsSync('/dev/shm') ? fs.readdirSync('/dev/shm') : [];
}

const created: mp.SharedMemory[] = [];
function make(opts: mp.SharedMemoryOptions): mp.SharedMemory {
  const s = new mp.SharedMemory(opts);
  created.push(s);
  return s;
}
afterEach(() => {
  for (const s of created.splice(0)) {
    s.close();
    try {
      s.unlink();
    } catch {
      /* already unlinked */
    }
  }
});

function runNode(code: string, timeout = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', code], { timeout }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

const python = ['/root/.pyenv/versions/3.13.0/bin/python3.13', 'python3.13'].find((p) => {
  try {
    execFileSync(p, ['-c', 'import multiprocessing.shared_memory'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
});

describe('SharedMemory', () => {
  it('creates a zero-filled segment with a random psm_ name and attaches by name', () => {
    const a = make({ create: true, size: 10_000 });
    expect(a.name).to.match(/^psm_[0-9a-f]{8}$/);
    expect(a.size).to.equal(10_000);
    expect(a.buf).to.be.instanceOf(Uint8Array);
    expect(a.buf.length).to.equal(10_000);
    expect(a.buf.every((x) => x === 0)).to.equal(true);
    a.buf[9999] = 7;
    const b = make({ name: a.name, size: 5 }); // attach ignores size
    expect(b.size).to.equal(10_000);
    expect(b.buf[9999]).to.equal(7);
    b.buf[0] = 1;
    expect(a.buf[0]).to.equal(1);
    expect(devShm()).to.include(a.name);
  });

  it("raises Python's errors: EEXIST, ENOENT (with code), size checks, NUL in names", () => {
    const a = make({ create: true, size: 16 });
    expect(() => new mp.SharedMemory({ name: a.name, create: true, size: 16 }))
      .to.throw(Error, /EEXIST/).with.property('code', 'EEXIST');
    expect(() => new mp.SharedMemory({ name: 'mp_test_no_such_segment' }))
      .to.throw(Error, /mp_test_no_such_segment/).with.property('code', 'ENOENT');
    expect(() => new mp.SharedMemory({ create: true, size: -1 })).to.throw(RangeError, /size/);
    expect(() => new mp.SharedMemory({ create: true, size: 0 })).to.throw(RangeError, /different from zero/);
    expect(() => new mp.SharedMemory({ create: true })).to.throw(RangeError, /different from zero/);
    expect(() => new mp.SharedMemory({})).to.throw(TypeError, /name/);
    expect(() => new mp.SharedMemory({ name: 'a\0b', create: true, size: 8 })).to.throw(TypeError, /NUL/);
    expect(() => new mp.SharedMemory({ name: 'x'.repeat(300), create: true, size: 8 }))
      .to.throw(Error).with.property('code').that.is.oneOf(['ENAMETOOLONG', 'EINVAL']);
  });

  it('creates with a given name; unlink() removes it and a second unlink() is ENOENT', () => {
    const name = `mp_test_${process.pid}_${Date.now()}`;
    const a = new mp.SharedMemory({ name, create: true, size: 100 });
    expect(a.name).to.equal(name);
    expect(devShm()).to.include(name);
    a.unlink();
    expect(devShm()).to.not.include(name);
    expect(() => a.unlink()).to.throw(Error).with.property('code', 'ENOENT');
    a.buf[0] = 3; // still mapped until closed
    a.close();
  });

  it('close() releases fd and mapping at once; buf then throws and old views are empty', () => {
    const fds = openFdCount();
    const a = make({ create: true, size: 4096 });
    const view = a.buf;
    expect(openFdCount()).to.equal(fds + 1);
    a.close();
    expect(openFdCount()).to.equal(fds);
    expect(a.closed).to.equal(true);
    expect(() => a.buf).to.throw(Error, /closed/);
    // (With NODE_MP_SHM_SAB=1 the memory is a SharedArrayBuffer, which cannot be
    // detached: it is then released when the last view is collected.)
    if (process.env.NODE_MP_SHM_SAB !== '1') expect(view.length).to.equal(0);
    a.close(); // twice is fine
  });

  it('is disposable', () => {
    let name = '';
    {
      using s = new mp.SharedMemory({ create: true, size: 64 });
      name = s.name;
      created.push(s);
    }
    expect(created[created.length - 1].closed).to.equal(true);
    expect(devShm()).to.include(name);
  });

  it('travels by name over a Connection-like transport, and with its fd to children', () => {
    const a = make({ create: true, size: 32 });
    a.buf[3] = 33;
    const b = loads(dumps(a, 'connection', []), 'connection', []) as mp.SharedMemory;
    created.push(b);
    expect(b).to.be.instanceOf(mp.SharedMemory);
    expect(b.name).to.equal(a.name);
    expect(b.buf[3]).to.equal(33);
    const fds: number[] = [];
    const msg = dumps(a, 'spawn', fds);
    expect(fds.length).to.equal(1);
    const c = loads(msg, 'spawn', fds.map((fd) => native.dup(fd))) as mp.SharedMemory;
    created.push(c);
    expect(c.buf[3]).to.equal(33);
  });

  it('is attached by name from an unrelated node process', async () => {
    const a = make({ create: true, size: 64 });
    const lib = JSON.stringify(path.resolve(__dirname, '../src/index.js'));
    const out = await runNode(
      `const mp = require(${lib}); const s = new mp.SharedMemory({ name: ${JSON.stringify(a.name)} });` +
        'console.log(s.size, s.buf[0]); s.buf.set([9, 8, 7], 1); s.close();',
    );
    expect(out.trim()).to.equal('64 0');
    expect([...a.buf.subarray(0, 4)]).to.deep.equal([0, 9, 8, 7]);
  });

  it('is attached by name from Python 3.13', async function () {
    if (!python) this.skip();
    const a = make({ create: true, size: 64 });
    a.buf[0] = 5;
    const out = execFileSync(python!, ['-c',
      'import sys\nfrom multiprocessing import shared_memory as m, resource_tracker as rt\n' +
      `s = m.SharedMemory(${JSON.stringify(a.name)}, track=False)\nprint(s.size >= 64, s.buf[0])\ns.buf[1] = 6\ns.close()`],
    { timeout: 15_000 }).toString();
    expect(out.trim()).to.equal('True 5');
    expect(a.buf[1]).to.equal(6);
  });

  it('leaks nothing: 1,000 segments created, unlinked and dropped', async function () {
    this.timeout(30_000);
    await collectUntil(() => false, 3);
    const fds = openFdCount();
    const entries = devShm().length;
    const maps = shmNative.shmStats().mappings;
    (function churn() {
      for (let i = 0; i < 1000; i++) {
        const s = new mp.SharedMemory({ create: true, size: 4096 });
        s.buf[0] = 1;
        s.unlink();
      }
    })();
    expect(devShm().length).to.equal(entries);
    await collectUntil(() => openFdCount() <= fds && shmNative.shmStats().mappings <= maps);
    expect(openFdCount()).to.equal(fds);
    expect(shmNative.shmStats().mappings).to.be.at.most(maps);
    // Closed explicitly, they are released at once.
    for (let i = 0; i < 1000; i++) {
      const s = new mp.SharedMemory({ create: true, size: 4096 });
      s.close();
      s.unlink();
    }
    expect(openFdCount()).to.equal(fds);
    expect(devShm().length).to.equal(entries);
  });
});

describe('ShareableList', () => {
  const lists: mp.ShareableList[] = [];
  afterEach(() => {
    for (const l of lists.splice(0)) {
      l.shm.close();
      try {
        l.shm.unlink();
      } catch {
        /* gone */
      }
    }
  });

  it('stores numbers, bigints, strings, Buffers, booleans and null with index access', () => {
    const sl = new mp.ShareableList([1, 2.5, 'héllo', Buffer.from('ab'), null, true, 2n ** 60n, -(2 ** 40)]);
    lists.push(sl);
    expect(sl.length).to.equal(8);
    expect(sl[0]).to.equal(1);
    expect(sl[1]).to.equal(2.5);
    expect(sl[2]).to.equal('héllo');
    expect(sl[3]).to.deep.equal(Buffer.from('ab'));
    expect(sl[4]).to.equal(null);
    expect(sl[5]).to.equal(true);
    expect(sl[6]).to.equal(2n ** 60n);
    expect(sl[7]).to.equal(-(2 ** 40));
    expect(sl[-1]).to.equal(-(2 ** 40));
    expect(sl.format).to.equal('qd8s8sxxxxxx?xxxxxxxx?qq');
    expect(sl.index('héllo')).to.equal(2);
    expect(sl.count(1)).to.equal(1);
    expect(() => sl.index('nope')).to.throw(RangeError);
    expect(() => sl[8]).to.throw(RangeError);
    sl[0] = 'seven!!'; // an int slot takes a string of up to 8 bytes
    expect(sl[0]).to.equal('seven!!');
    sl[2] = 'ab';
    expect(sl[2]).to.equal('ab');
    expect(() => { sl[2] = 'much too long'; }).to.throw(RangeError, /exceeds available storage/);
    sl[1] = null;
    expect(sl[1]).to.equal(null);
    expect([...sl]).to.have.length(8);
  });

  it('attaches by name, and a child writes into it', async () => {
    const sl = new mp.ShareableList(['x'.repeat(10), 41]);
    lists.push(sl);
    const other = new mp.ShareableList(null, { name: sl.shm.name });
    expect(other.toArray()).to.deep.equal(['x'.repeat(10), 41]);
    other.shm.close();
    const p = new mp.Process({ target: t.writeList, args: [sl] });
    p.start();
    await within(p.join(), 15_000, 'child');
    expect(p.exitCode).to.equal(0);
    expect(sl.toArray()).to.deep.equal(['child', 42]);
  });

  it('has the layout of Python 3.13 (Python reads ours and we read Python’s)', async function () {
    if (!python) this.skip();
    const sl = new mp.ShareableList([7, 1.5, 'py', Buffer.from('b'), null, false]);
    lists.push(sl);
    const out = execFileSync(python!, ['-c',
      'from multiprocessing import shared_memory as m\n' +
      `l = m.ShareableList(name=${JSON.stringify(sl.shm.name)})\nprint(list(l))\nl[0] = 99\nl[2] = "yo"\nl.shm.close()\n` +
      '# 3.13 registers attachments too: this segment is not Python\'s to unlink\n' +
      'from multiprocessing import resource_tracker\nresource_tracker.unregister(l.shm._name, "shared_memory")'],
    { timeout: 15_000 }).toString();
    expect(out.trim()).to.equal("[7, 1.5, 'py', b'b', None, False]");
    expect(sl[0]).to.equal(99);
    expect(sl[2]).to.equal('yo');
  });
});

for (const method of methodsUnderTest()) {
  describe(`SharedMemory under '${method}'`, function () {
    this.timeout(30_000);
    const ctx = mp.getContext(method);

    async function run(target: (...a: any[]) => unknown, args: unknown[]): Promise<void> {
      const p = new ctx.Process({ target, args });
      p.start();
      await within(p.join(), 15_000, `${method} child`);
      expect(p.exitCode).to.equal(0);
      p.close();
    }

    it("a child's writes through a SharedMemory arg are seen by the parent after join", async () => {
      const s = make({ create: true, size: 1024 });
      await run(t.writeBytes, [s, [1, 2, 3, 4]]);
      expect([...s.buf.subarray(0, 5)]).to.deep.equal([1, 2, 3, 4, 0]);
    });

    it('a child attaches by name', async () => {
      const s = make({ create: true, size: 64 });
      await run(t.attachAndWrite, [s.name, [5, 6]]);
      expect([...s.buf.subarray(0, 3)]).to.deep.equal([5, 6, 0]);
    });

    it('a segment already unlinked still reaches the child (by fd, or inherited)', async () => {
      const s = make({ create: true, size: 64 });
      s.unlink();
      await run(t.writeBytes, [s, [42]]);
      expect(s.buf[0]).to.equal(42);
    });

    it('Atomics.add from two processes on an Int32Array view of buf gives the exact total', async () => {
      const s = make({ create: true, size: 64 });
      const counter = new Int32Array(s.buf.buffer, s.buf.byteOffset, 1);
      const n = 200_000;
      const ps = [0, 1].map(() => new ctx.Process({ target: t.atomicAddsShm, args: [s, n] }));
      ps.forEach((p) => p.start());
      await within(Promise.all(ps.map((p) => p.join())), 20_000, 'atomic adders');
      ps.forEach((p) => expect(p.exitCode).to.equal(0));
      expect(counter[0]).to.equal(2 * n);
    });
  });
}
