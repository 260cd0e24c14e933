// Stress: hundreds of children started while the parent allocates, runs hot code
// (on-stack replacement) and timers. No hang, no crash, every exit code right.
import { expect } from 'chai';
import * as mp from '../src/index';
import * as t from './fixtures/targets';
import { methodsUnderTest, within } from './helpers';

const COUNT = Number(process.env.MP_SOAK_COUNT ?? 300);

function hotLoop(n: number): number {
  let x = 0;
  for (let i = 0; i < n; i++) x = (x * 31 + i) | 0;
  return x;
}

for (const method of methodsUnderTest().filter((m) => m !== 'spawn')) {
  describe(`soak under '${method}'`, function () {
    this.timeout(240_000);

    it(`starts ${COUNT} children while the parent allocates, runs hot code and timers`, async () => {
      const ctx = mp.getContext(method);
      let garbage: unknown[] = [];
      let ticks = 0;
      const timer = setInterval(() => {
        ticks++;
        garbage.push(new Array(1000).fill(ticks));
        if (garbage.length > 200) garbage = [];
      }, 1);
      const codes: Array<number | null> = [];
      const expected: number[] = [];
      try {
        const batch = 8;
        for (let base = 0; base < COUNT; base += batch) {
          const procs: mp.Process[] = [];
          for (let i = base; i < Math.min(COUNT, base + batch); i++) {
            // The parent keeps allocating and compiling between forks.
            for (let k = 0; k < 20; k++) garbage.push({ k, s: 'x'.repeat(100) });
            hotLoop(20_000 + i);
            const p = new ctx.Process({ target: t.soakChild, args: [i] });
            p.start();
            procs.push(p);
            expected.push(i % 7);
          }
          await within(Promise.all(procs.map((p) => p.join())), 30_000, `children ${base}..${base + batch - 1}`);
          for (const p of procs) {
            codes.push(p.exitCode);
            p.close();
          }
        }
      } finally {
        clearInterval(timer);
      }
      expect(codes).to.deep.equal(expected);
      expect(ticks).to.be.above(0);
    });
  });
}
