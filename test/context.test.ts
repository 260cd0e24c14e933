import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as mp from '../src/index';
import { forkServer } from '../src/forkserver';
import * as t from './fixtures/targets';
import { childrenOf, methodsUnderTest, pidAlive, readJson, runScenario, tmpFile, waitUntil, within } from './helpers';

const singleThreaded = process.execArgv.includes('--single-threaded');

describe('start methods and contexts', function () {
  this.timeout(30_000);

  it('lists the usable methods, default first', () => {
    const all = mp.getAllStartMethods();
    expect(all[0]).to.equal('forkserver');
    expect(all).to.include('spawn');
    expect(all.includes('fork')).to.equal(singleThreaded);
    expect(mp.getStartMethod()).to.equal('forkserver');
  });

  it("refuses 'fork' without --single-threaded, naming the alternatives", () => {
    if (singleThreaded) {
      expect(mp.getContext('fork').getStartMethod()).to.equal('fork');
    } else {
      expect(() => mp.getContext('fork')).to.throw(/--single-threaded.*'forkserver'.*'spawn'/s);
    }
    expect(() => mp.getContext('bogus' as mp.StartMethod)).to.throw(/unknown start method/);
  });

  it('setStartMethod() sets once, and again only with force', () => {
    try {
      mp.setStartMethod('spawn');
      expect(mp.getStartMethod()).to.equal('spawn');
      expect(() => mp.setStartMethod('forkserver')).to.throw(/already set.*force/);
      mp.setStartMethod('forkserver', { force: true });
      expect(mp.getStartMethod()).to.equal('forkserver');
    } finally {
      mp.setStartMethod(null, { force: true });
    }
    expect(mp.getStartMethod(true)).to.equal(null);
  });

  it('gives contexts every factory, with and without new', () => {
    const ctx = mp.getContext('spawn');
    expect(ctx.getStartMethod()).to.equal('spawn');
    const a = new ctx.Process({ target: t.sleepFor, args: [1] });
    const b = (ctx.Process as unknown as (o: mp.ProcessOptions<[number]>) => mp.Process)({ target: t.sleepFor, args: [1] });
    expect(a).to.be.instanceOf(mp.Process);
    expect(b).to.be.instanceOf(mp.Process);
    expect(typeof ctx.currentProcess).to.equal('function');
    for (const f of ['Lock', 'Value', 'Array', 'RawArray', 'SharedMemory', 'Pipe'] as const) expect(typeof ctx[f]).to.equal('function');
    const [r, w] = ctx.Pipe();
    r.close();
    w.close();
    expect(ctx.cpuCount()).to.equal(mp.cpuCount());
  });

  it('validates setExecutable() and setForkserverPreload()', () => {
    expect(() => mp.setExecutable('')).to.throw(TypeError);
    expect(() => mp.setForkserverPreload('x' as never)).to.throw(TypeError);
  });
});

for (const method of methodsUnderTest()) {
  describe(`guards and module loading under '${method}'`, function () {
    this.timeout(30_000);

    it('refuses an unguarded recursive start instead of a fork bomb', async () => {
      const r = await runScenario('unguarded.js', [method], { singleThreaded: method === 'fork' });
      if (method === 'fork') {
        // The child does not re-import its module under fork: nothing recursive happens.
        expect(r.code).to.equal(0);
      } else {
        expect(r.stderr).to.match(/main-module guard/);
        expect(r.stdout).to.match(/child exit code 1/);
      }
    });

    it('works from an ES module (function sent by reference)', async () => {
      const r = await runScenario('esm_main.mjs', [method], { singleThreaded: method === 'fork' });
      expect(r.stderr).to.equal('');
      expect(r.stdout.trim()).to.equal('exit 0 result 42 sq 49');
    });

    it('starts children from `node -e` code, which no child runs again', async () => {
      // Were -e passed on, each child (and the forkserver) would run this code again and start
      // children of its own; the guard makes such a run end at once instead of multiplying.
      const lib = JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'));
      const code = `
        if (process.env.MP_EVAL_RAN) { process.stdout.write('ran again in ' + process.pid); process.exit(3); }
        process.env.MP_EVAL_RAN = '1';
        const mp = require(${lib});
        const p = new (mp.getContext(${JSON.stringify(method)}).Process)({ target: () => {} });
        p.start();
        p.join(20000).then(() => process.stdout.write('exit ' + p.exitCode));`;
      const args = [...(method === 'fork' ? ['--single-threaded'] : []), '--input-type=commonjs', '-e', code];
      const out = await new Promise<string>((resolve, reject) => {
        execFile(process.execPath, args, { timeout: 20_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
      });
      expect(out).to.equal('exit 0');
    });

    it("passes on the parent's execArgv", async () => {
      const file = tmpFile('execargv');
      const r = await runScenario('execargv.js', [method, file], { singleThreaded: method === 'fork' });
      expect(r.code, r.stderr).to.equal(0);
      const argv = readJson<string[]>(file);
      expect(argv).to.include('--max-old-space-size=300');
    });
  });
}

if (methodsUnderTest().includes('forkserver')) {
  describe("the forkserver under 'forkserver'", function () {
    this.timeout(30_000);
    const ctx = mp.getContext('forkserver');

    /** Runs a short child to the end: the server is up (and its spares are being forked). */
    async function runOneChild(): Promise<void> {
      const warm = new ctx.Process({ target: t.sleepFor, args: [1] });
      warm.start();
      await within(warm.join(), 15_000, 'join');
    }

    /** The running server's pid and its two spares, once both are forked. */
    async function serverWithSpares(): Promise<{ server: number; spares: number[] }> {
      await runOneChild();
      const server = forkServer.serverPid!;
      await waitUntil(() => childrenOf(server).length === 2, 5000, 'the server to fork its spares');
      return { server, spares: childrenOf(server) };
    }

    it('runs children of its own, reports their pid and status to the client', async () => {
      const file = tmpFile('fsinfo');
      const p = new ctx.Process({ target: t.writeInfo, args: [file, null] });
      p.start();
      await within(p.join(), 15_000, 'join');
      const info = readJson(file);
      expect(info.pid).to.equal(p.pid);
      expect(info.ppid).to.not.equal(process.pid); // the server is the OS parent, not us
      expect(info.parentPid).to.equal(process.pid); // but parentProcess() is us
      expect(forkServer.serverPid).to.equal(info.ppid);
    });

    it('restarts transparently when the server is killed', async () => {
      await runOneChild();
      const old = forkServer.serverPid!;
      process.kill(old, 'SIGKILL');
      await waitUntil(() => !pidAlive(old), 5000, 'the server to die');
      const p = new ctx.Process({ target: t.exitWith, args: [3] });
      p.start();
      await within(p.join(), 15_000, 'join');
      expect(p.exitCode).to.equal(3);
      expect(forkServer.serverPid).to.not.equal(old);
    });

    it('outlives SIGINT (Ctrl-C reaches the whole process group), as Python\'s does', async () => {
      await runOneChild();
      const server = forkServer.serverPid!;
      const p = new ctx.Process({ target: t.sleepFor, args: [20_000] });
      p.start();
      await waitUntil(() => p.pid !== null, 5000, 'the child to start');
      process.kill(server, 'SIGINT');
      p.interrupt();  // children still end on SIGINT
      await within(p.join(), 15_000, 'join');
      expect(p.exitCode).to.equal(-2);  // reported by the server, which lives on
      expect(pidAlive(server)).to.equal(true);
      const q = new ctx.Process({ target: t.exitWith, args: [4] });
      q.start();
      await within(q.join(), 15_000, 'join');
      expect(q.exitCode).to.equal(4);
      expect(forkServer.serverPid).to.equal(server);
    });

    it('interrupt() right after start() ends the child: no SIGINT is lost at its fork', async () => {
      for (let round = 0; round < 4; round++) {
        const procs = [0, 1, 2, 3, 4].map(() => new ctx.Process({ target: t.sleepFor, args: [20_000] }));
        for (const p of procs) p.start();
        for (const p of procs) p.interrupt();
        await within(Promise.all(procs.map((p) => p.join())), 10_000, `round ${round}`);
        expect(procs.map((p) => p.exitCode)).to.deep.equal([-2, -2, -2, -2, -2]);
      }
    });

    it('exits when its last client is gone, and its spare with it', async () => {
      const r = await runScenario('forkserver_client.js', []);
      expect(r.code, r.stderr).to.equal(0);
      const { server, children } = JSON.parse(r.stdout) as { server: number; children: number[] };
      expect(server).to.be.above(0);
      expect(children).to.have.length(2); // the spares for the next requests
      await waitUntil(() => !pidAlive(server), 5000, 'the forkserver to exit');
      await waitUntil(() => children.every((pid) => !pidAlive(pid)), 5000, 'its spares to exit');
    });

    it('loads the Node built-ins its client had loaded, so its children share them', async () => {
      const r = await runScenario('forkserver_builtins.js', []);
      expect(r.code, r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout)).to.deep.equal({ zlib: true, wasi: false });
    });

    it('hands each request to a spare forked in advance, and copes with dead spares', async () => {
      const { server, spares } = await serverWithSpares();
      const p = new ctx.Process({ target: t.exitWith, args: [4] });
      p.start();
      expect(spares).to.include(p.pid);
      await within(p.join(), 15_000, 'join');
      expect(p.exitCode).to.equal(4);
      // Spares that die while waiting (one of them reading this client's connection) are
      // replaced; nobody sees them.
      await waitUntil(() => childrenOf(server).length === 2, 5000, 'the next spares');
      const dead = childrenOf(server);
      for (const pid of dead) process.kill(pid, 'SIGKILL');
      await waitUntil(() => dead.every((pid) => !pidAlive(pid)), 5000, 'the spares to die');
      for (let i = 0; i < 3; i++) {
        const q = new ctx.Process({ target: t.exitWith, args: [5 + i] });
        q.start();
        expect(dead).to.not.include(q.pid);
        await within(q.join(), 15_000, 'join');
        expect(q.exitCode).to.equal(5 + i);
      }
      expect(forkServer.serverPid).to.equal(server);
    });

    it('replaces a spare taken by a long-running child without waiting for that child to end', async () => {
      // The replacement waits for the server's children to end (see REPLACE_DELAY_MS), but not for ever.
      const { server, spares } = await serverWithSpares();
      const p = new ctx.Process({ target: t.sleepFor, args: [20_000] });
      p.start();
      try {
        expect(spares).to.include(p.pid);
        await waitUntil(() => childrenOf(server).filter((pid) => pid !== p.pid).length === 2, 5000, 'a replacement spare');
        expect(p.isAlive()).to.equal(true);
      } finally {
        p.terminate();
        await within(p.join(), 15_000, 'join');
      }
      expect(p.exitCode).to.equal(-15);
    });

    it('hands a request to the attached spare itself: a child starts while the server is stopped', async () => {
      // Once the replacement is forked, the other spare has been attached to this client.
      const { server, spares } = await serverWithSpares();
      const file = tmpFile('direct');
      const p = new ctx.Process({ target: t.writeInfo, args: [file, 'direct'] });
      process.kill(server, 'SIGSTOP');
      try {
        p.start();
        expect(spares).to.include(p.pid);
        await waitUntil(() => fs.existsSync(file), 10_000, 'the child to run its target');
      } finally {
        process.kill(server, 'SIGCONT');
      }
      await within(p.join(), 15_000, 'join');
      expect(p.exitCode).to.equal(0);
      expect(readJson(file).extra).to.equal('direct');
    });

    it('serves a burst of starts (spares, then forks) with every pid and exit status right', async () => {
      const procs = Array.from({ length: 8 }, (_, i) => new ctx.Process({ target: t.exitWith, args: [10 + i] }));
      for (const q of procs) q.start();
      expect(new Set(procs.map((q) => q.pid)).size).to.equal(procs.length);
      await within(Promise.all(procs.map((q) => q.join())), 15_000, 'join');
      expect(procs.map((q) => q.exitCode)).to.deep.equal(procs.map((_, i) => 10 + i));
    });

    it('preloads modules given to setForkserverPreload()', async () => {
      const r = await runScenario('preload.js', [path.join(__dirname, 'fixtures', 'preloaded.js')]);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stdout.trim()).to.equal('preloaded in server: true');
    });
  });
}

if (methodsUnderTest().includes('fork')) {
  describe("inherited handles under 'fork'", function () {
    this.timeout(30_000);

    it("never accepts on the parent's listening server, and is not kept alive by it", async () => {
      const r = await runScenario('inherited_server.js', [], { singleThreaded: true });
      expect(r.stderr).to.equal('');
      const out = JSON.parse(r.stdout) as { served: number[]; childExit: number; childMs: number };
      expect(out.childExit).to.equal(0);
      expect(out.childMs).to.be.below(5000);
      // Every connection was answered by the parent.
      expect(out.served.every((pid) => pid === out.served[0])).to.equal(true);
      expect(out.served).to.have.length(20);
    });

    if (process.platform === 'linux') {
      for (const nested of [false, true]) {
        it(`gives V8's heap pages their MADV_DONTFORK back after a fork, and no other memory${nested ? ', in a forked child too' : ''}`, async () => {
          const r = await runScenario('fork_dontfork.js', nested ? ['nested', tmpFile('dontfork')] : [], { singleThreaded: true });
          type Range = { start: string; end: string; perms: string; dc: boolean };
          const out = JSON.parse(r.stdout) as { before: Range[]; after: Range[]; exits: number[] };
          expect(out.exits).to.deep.equal(nested ? [0] : [0, 0]);
          const key = (x: Range) => `${x.start}-${x.end}`;
          const after = new Map(out.after.map((x) => [key(x), x]));
          const both = out.before.filter((x) => after.has(key(x)));
          // No range that lacked the flag before (thread stacks, malloc's, the Buffers') has it now.
          const gained = both.filter((x) => !x.dc && after.get(key(x))!.dc);
          expect(gained.map(key)).to.deep.equal([]);
          // V8's read-write pages that had it have it again (a few unlike a page may stay without).
          const v8Pages = both.filter((x) => x.dc && x.perms === 'rw-p');
          expect(v8Pages.length).to.be.above(20);
          const back = v8Pages.filter((x) => after.get(key(x))!.dc);
          expect(back.length / v8Pages.length).to.be.above(0.8);
        });
      }
    }

    it('warns once when it forks while a worker thread runs (as Python does for threads)', async () => {
      const r = await runScenario('fork_with_worker.js', [], { singleThreaded: true });
      const out = JSON.parse(r.stdout) as { codes: string[]; exits: Array<number | null> };
      expect(out.exits).to.deep.equal([0, 0, 0]);
      expect(out.codes).to.deep.equal(['MP_FORK_WITH_WORKERS']);
      // Printed by the parent only: a child does not emit it again.
      expect(r.stderr.match(/MultiprocessingWarning: fork\(\) while 1 worker thread/g)).to.have.length(1);
    });
  });
}

describe('package entry points', function () {
  this.timeout(30_000);

  it('loads as ESM and CommonJS, sharing one instance', async () => {
    const { execFileSync } = await import('node:child_process');
    const root = path.resolve(__dirname, '..', '..');
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
      import * as esm from 'node-multiprocessing';
      import { createRequire } from 'node:module';
      const cjs = createRequire(import.meta.url)('node-multiprocessing');
      console.log(esm.Process === cjs.Process, esm.currentProcess() === cjs.currentProcess(), typeof esm.getContext);
    `], { cwd: root, encoding: 'utf8' });
    expect(out.trim()).to.equal('true true function');
    expect(fs.existsSync(path.join(root, 'dist', 'src', 'index.d.ts'))).to.equal(true);
  });
});
