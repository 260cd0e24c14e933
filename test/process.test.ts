import { expect } from 'chai';
import * as fs from 'node:fs';
import * as mp from '../src/index';
import * as t from './fixtures/targets';
import * as async_hooks from 'node:async_hooks';
import * as nodeModule from 'node:module';
import { methodsUnderTest, openFdCount, pidAlive, readJson, runScenario, tmpFile, waitUntil, within } from './helpers';
import { native } from '../src/native';

for (const method of methodsUnderTest()) {
  describe(`Process under '${method}'`, function () {
    this.timeout(30_000);
    const ctx = mp.getContext(method);

    /** Starts p and waits (bounded) until it ended. */
    async function startAndJoin(p: mp.Process): Promise<void> {
      p.start();
      await within(p.join(), 15_000, 'join');
    }

    it('runs an exported target with its args in a new process', async () => {
      const file = tmpFile('info');
      process.env.MP_TEST_VAR = `value-${method}`;
      const p = new ctx.Process({ target: t.writeInfo, args: [file, { n: 1, big: 2n ** 70n, m: new Map([[1, 'a']]) }] });
      expect(p.pid).to.equal(null);
      expect(p.exitCode).to.equal(null);
      p.start();
      delete process.env.MP_TEST_VAR;
      await within(p.join(), 15_000, 'join');
      expect(p.exitCode).to.equal(0);
      const info = readJson(file);
      expect(info.pid).to.equal(p.pid).and.not.equal(process.pid);
      expect(info.parentPid).to.equal(process.pid);
      expect(info.parentAlive).to.equal(true);
      expect(info.name).to.equal(p.name);
      expect(info.env).to.equal(`value-${method}`);
      expect(info.cwd).to.equal(process.cwd());
      // The parent's arguments, as Python's spawn sets sys.argv (argv[1]: see spawn.ts).
      expect(info.argv.slice(2)).to.deep.equal(process.argv.slice(2));
      expect(info.authkey).to.equal(mp.currentProcess().authkey.toString('hex'));
      expect(info.extra).to.deep.equal({ n: 1, big: `${2n ** 70n}n`, m: [[1, 'a']] });
      if (method !== 'forkserver') expect(info.ppid).to.equal(process.pid);
      p.close();
    });

    it("gives the child the parent's environment at start(): removed, changed and new variables", async () => {
      const r = await runScenario('environment.js', [method], {
        singleThreaded: method === 'fork',
        env: { MP_ENV_GONE: 'set', MP_ENV_KEEP: 'kept', MP_ENV_CHANGED: 'old' },
      });
      expect(r.stderr).to.equal('');
      expect(r.code).to.equal(0);
      const out = JSON.parse(r.stdout);
      expect(out.before).to.deep.equal({ MP_ENV_GONE: 'set', MP_ENV_KEEP: 'kept', MP_ENV_CHANGED: 'old', MP_ENV_NEW: null });
      const after = { MP_ENV_GONE: null, MP_ENV_KEEP: 'kept', MP_ENV_CHANGED: 'new=value=with=equals', MP_ENV_NEW: 'äöü ✓' };
      expect(out.after).to.deep.equal(after);
      expect(out.replaced).to.deep.equal({ ...after, MP_ENV_NEW: 'replaced' });
      if (method !== 'fork') {
        expect(out.fromWorker).to.deep.equal({ ...after, MP_ENV_KEEP: null, MP_ENV_NEW: 'set in the worker' });
      }
    });

    it('passes args through the V8 serializer (Map, BigInt, Date, typed arrays)', async () => {
      const file = tmpFile('args');
      const p = new ctx.Process({ target: t.recordArgs, args: [file, 5n, new Date(0).toISOString(), [1, [2, { x: 3 }]]] });
      await startAndJoin(p);
      expect(readJson(file)).to.deep.equal(['5n', '1970-01-01T00:00:00.000Z', [1, [2, { x: 3 }]]]);
    });

    it('gives exit code 1 for an uncaught error and n for process.exit(n)', async () => {
      const a = new ctx.Process({ target: t.throwError });
      const b = new ctx.Process({ target: t.exitWith, args: [7] });
      const c = new ctx.Process({ target: t.asyncReject });
      a.start();
      b.start();
      c.start();
      await within(Promise.all([a.join(), b.join(), c.join()]), 15_000, 'join');
      expect([a.exitCode, b.exitCode, c.exitCode]).to.deep.equal([1, 7, 1]);
    });

    it("runs the child's 'exit' listeners as a plain node script ends: exitCode unset, or the one set", async () => {
      const [fileA, fileB] = [tmpFile('exit-a'), tmpFile('exit-b')];
      const a = new ctx.Process({ target: t.recordExit, args: [fileA, null] });
      const b = new ctx.Process({ target: t.recordExit, args: [fileB, 5] });
      a.start();
      b.start();
      await within(Promise.all([a.join(), b.join()]), 15_000, 'join');
      expect([a.exitCode, b.exitCode]).to.deep.equal([0, 5]);
      expect(readJson(fileA)).to.deep.equal({ arg: 0, exitCode: null });
      expect(readJson(fileB)).to.deep.equal({ arg: 5, exitCode: 5 });
    });

    it('awaits an async target', async () => {
      const file = tmpFile('async');
      const p = new ctx.Process({ target: t.asyncWrite, args: [file, 100] });
      await startAndJoin(p);
      expect(p.exitCode).to.equal(0);
      expect(readJson(file)).to.deep.equal({ done: true });
    });

    it('lives on for its own ref\'d timers, not for unref\'d ones', async () => {
      const file = tmpFile('linger');
      const a = new ctx.Process({ target: t.lingerRefed, args: [file, 300] });
      a.start();
      await within(a.join(), 15_000, 'join');
      expect(readJson(file)).to.deep.equal({ fired: true });
      const b = new ctx.Process({ target: t.lingerUnrefed, args: [60_000] });
      const t0 = Date.now();
      b.start();
      await within(b.join(), 15_000, 'join');
      expect(b.exitCode).to.equal(0);
      expect(Date.now() - t0).to.be.below(10_000);
    });

    it('waits for a timer it unref\'d and ref\'d again, after churning through resources of its own', async () => {
      const file = tmpFile('churn');
      const p = new ctx.Process({ target: t.lingerAfterChurn, args: [file] });
      await startAndJoin(p);
      expect(p.exitCode).to.equal(0);
      expect(readJson(file)).to.deep.equal({ fired: true });
    });

    it('terminate(), kill() and interrupt() give -15, -9 and -2', async () => {
      const procs = [0, 1, 2].map(() => new ctx.Process({ target: t.sleepFor, args: [20_000] }));
      for (const p of procs) p.start();
      for (const p of procs) expect(p.isAlive()).to.equal(true);
      procs[0].terminate();
      procs[1].kill();
      procs[2].interrupt();
      await within(Promise.all(procs.map((p) => p.join())), 15_000, 'join');
      expect(procs.map((p) => p.exitCode)).to.deep.equal([-15, -9, -2]);
      expect(procs.some((p) => p.isAlive())).to.equal(false);
    });

    it('join(timeout) returns while the child still runs; joinSync waits', async () => {
      const p = new ctx.Process({ target: t.sleepFor, args: [400] });
      p.start();
      const t0 = Date.now();
      await p.join(50);
      expect(Date.now() - t0).to.be.below(300);
      expect(p.isAlive()).to.equal(true);
      expect(p.exitCode).to.equal(null);
      if (p.pid !== null) {
        p.joinSync(10_000);
      } else {
        await within(p.join(), 15_000, 'join');
      }
      expect(p.exitCode).to.equal(0);
      expect(p.isAlive()).to.equal(false);
    });

    it('joinSync() without a timeout waits for the end', async () => {
      const r = await runScenario('join_sync.js', [method], { singleThreaded: method === 'fork', timeoutMs: 15_000 });
      expect(r.code, r.stderr).to.equal(0);
      const out = JSON.parse(r.stdout) as { ms: number; exitCode: number; alive: boolean };
      expect(out.ms).to.be.at.least(200);
      expect(out.exitCode).to.equal(0);
      expect(out.alive).to.equal(false);
    });

    it('runs a subclass\'s run() with its own properties', async () => {
      const file = tmpFile('sub');
      const w = new t.Worker({ name: 'the-worker', context: ctx });
      w.file = file;
      w.factor = 3;
      w.start();
      await within(w.join(), 15_000, 'join');
      expect(w.exitCode).to.equal(0);
      expect(readJson(file)).to.deep.equal({ ran: true, factor: 3, name: 'the-worker', cls: 'Worker' });
    });

    it('sends a self-contained function by source', async () => {
      const file = tmpFile('src');
      const p = new ctx.Process({
        target: (f: string, x: number) => require('node:fs').writeFileSync(f, JSON.stringify(x * 2)),
        args: [file, 21],
      });
      await startAndJoin(p);
      expect(p.exitCode).to.equal(0);
      expect(readJson(file)).to.equal(42);
    });

    if (method !== 'fork') {
      it('builds a by-source function without parsing it again (no parser loaded in the child)', async () => {
        const file = tmpFile('src-noparse');
        // A method shorthand needs the sender's rewriting to evaluate; the child only evaluates.
        const holder = {
          report(f: string) {
            const loaded = Object.keys(require.cache).filter((k) => /[\\/]acorn[\\/]/.test(k));
            require('node:fs').writeFileSync(f, JSON.stringify(loaded));
          },
        };
        const p = new ctx.Process({ target: holder.report, args: [file] });
        await startAndJoin(p);
        expect(p.exitCode).to.equal(0);
        expect(readJson(file)).to.deep.equal([]);
      });

      it("compiles with Node's compile cache where Node has one (22.1+), unless NODE_DISABLE_COMPILE_CACHE", async () => {
        const file = tmpFile('compile-cache');
        const p = new ctx.Process({
          target: (f: string) => {
            const m = require('node:module');
            require('node:fs').writeFileSync(f, JSON.stringify({ dir: m.getCompileCacheDir?.() ?? null }));
          },
          args: [file],
        });
        await startAndJoin(p);
        expect(p.exitCode).to.equal(0);
        const { dir } = readJson(file) as { dir: string | null };
        const nodeHasIt = typeof (nodeModule as { getCompileCacheDir?: unknown }).getCompileCacheDir === 'function';
        if (nodeHasIt && !process.env.NODE_DISABLE_COMPILE_CACHE) expect(dir).to.be.a('string').with.length.above(0);
        else expect(dir).to.equal(null);
      });
    }

    if (method === 'fork') {
      it('tracks the child\'s own resources without promise hooks where Node allows (trackPromises)', async () => {
        // Node with the trackPromises option refuses it next to promiseResolve: a probe that enables nothing.
        let nodeHasOption = false;
        try {
          async_hooks.createHook({ promiseResolve() {}, trackPromises: false } as async_hooks.HookCallbacks);
        } catch {
          nodeHasOption = true;
        }
        const file = tmpFile('promise-hooks');
        const p = new ctx.Process({
          target: async () => {
            const before = async_hooks.executionAsyncId();
            await null;
            // With promise hooks on, a continuation runs in its promise's (new, higher) async id;
            // without, in the context that ran the microtasks (here the one it started in).
            fs.writeFileSync(file, JSON.stringify([before, async_hooks.executionAsyncId()]));
          },
        });
        await startAndJoin(p);
        expect(p.exitCode).to.equal(0);
        const [before, after] = readJson(file) as [number, number];
        if (nodeHasOption) expect(after).to.be.at.most(before);
        else expect(after).to.be.above(before);
      });

      it('runs closures (the heap is inherited)', async () => {
        const file = tmpFile('closure');
        const secret = { value: 99 };
        const p = new ctx.Process({ target: () => fs.writeFileSync(file, JSON.stringify(secret)) });
        await startAndJoin(p);
        expect(readJson(file)).to.deep.equal({ value: 99 });
      });
    } else {
      it('refuses a closure in start(), naming the free variable', () => {
        const secret = 5;
        const p = new ctx.Process({ target: (x: number) => x + secret });
        expect(() => p.start()).to.throw(TypeError, /'secret'.*Export it from a module/s);
      });

      it('refuses a non-serializable argument in start()', () => {
        const p = new ctx.Process({ target: t.recordArgs, args: ['x', () => 1] });
        expect(() => p.start()).to.throw(TypeError, /cannot send the arguments of .*could not be cloned/s);
        expect(p.pid).to.equal(null);
      });
    }

    it('lets a child start its own children', async () => {
      const file = tmpFile('grand');
      const p = new ctx.Process({ target: t.startGrandchild, args: [file] });
      p.start();
      await within(p.join(), 20_000, 'join');
      expect(p.exitCode).to.equal(0);
      const info = readJson(file);
      expect(info.extra).to.equal('grandchild');
      expect(info.parentPid).to.equal(p.pid);
      expect(info.name).to.match(/^Process-\d+:1$/);
    });

    it('lets a child and its own child both live on for their own timers', async () => {
      const file = tmpFile('linger-grand');
      const p = new ctx.Process({ target: t.startLingeringGrandchild, args: [file, method] });
      p.start();
      await within(p.join(), 20_000, 'join');
      expect(p.exitCode).to.equal(0);
      const info = readJson(file);
      expect(info).to.include({ grandchildFired: true, grandchildExit: 0, pid: p.pid });
      if (info.kernelPid !== null) expect(info.kernelPid).to.equal(p.pid);
      expect(process.pid).to.equal(native.getpid());
    });

    it('forbids a daemonic process to have children', async () => {
      const file = tmpFile('daemonkids');
      const p = new ctx.Process({ target: t.startGrandchild, args: [file], daemon: true });
      await startAndJoin(p);
      expect(readJson(file).error).to.match(/daemonic processes are not allowed to have children/);
    });

    it('reports misuse like Python', async () => {
      const p = new ctx.Process({ target: t.sleepFor, args: [300] });
      await p.join(0).then(() => expect.fail('join before start'), (e: Error) => expect(e.message).to.match(/started process/));
      p.start();
      expect(() => p.start()).to.throw(/twice/);
      expect(() => { p.daemon = true; }).to.throw(/already started/);
      expect(() => p.close()).to.throw(/still running/);
      await within(p.join(), 15_000, 'join');
      p.close();
      expect(() => p.isAlive()).to.throw(/closed/);
      expect(() => new ctx.Process({ target: 5 as never })).to.throw(TypeError);
      expect(() => new ctx.Process({ args: 5 as never })).to.throw(TypeError);
    });

    it('lists active children and forgets finished ones', async () => {
      const p = new ctx.Process({ target: t.sleepFor, args: [200] });
      p.start();
      expect(mp.activeChildren()).to.include(p);
      await within(p.join(), 15_000, 'join');
      expect(mp.activeChildren()).to.not.include(p);
    });

    it('exposes a sentinel fd and closes it with close()', async () => {
      const before = openFdCount();
      for (let i = 0; i < 20; i++) {
        const p = new ctx.Process({ target: t.sleepFor, args: [1] });
        await startAndJoin(p);
        if (p.pid !== null) expect(p.sentinel).to.be.a('number');
        p.close();
      }
      // The forkserver connection and lifeline pipe may appear once.
      expect(openFdCount() - before).to.be.at.most(3);
    });

    it('never lets a killed child hang join()', async () => {
      const p = new ctx.Process({ target: t.signalExit });
      await startAndJoin(p);
      expect(p.exitCode).to.equal(-9);
    });

    it('tells a non-daemonic child that its parent died; a daemonic child dies with it', async function () {
      const r = await runScenario('orphan.js', [method], { singleThreaded: method === 'fork' });
      expect(r.stderr).to.equal('');
      const { daemon, plain } = JSON.parse(r.stdout) as { daemon: number; plain: number };
      await waitUntil(() => !pidAlive(daemon), 5000, 'the daemonic child to die with its parent');
      await waitUntil(() => !pidAlive(plain), 8000, 'the non-daemonic child to notice and exit');
    });
  });
}

describe('currentProcess / parentProcess in the main process', () => {
  it('is MainProcess with no parent', () => {
    expect(mp.currentProcess().name).to.equal('MainProcess');
    expect(mp.currentProcess().pid).to.equal(process.pid);
    expect(mp.parentProcess()).to.equal(null);
    expect(mp.currentProcess().authkey).to.have.length(32);
    expect(mp.cpuCount()).to.be.at.least(1);
  });
});
