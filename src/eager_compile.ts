// In a process that can fork (--single-threaded: a 'fork' parent, the forkserver), the
// library is compiled whole while it loads. A forked child inherits the bytecode; compiled
// lazily, the parts only a child runs (its start, its exit) were compiled again in every
// child: ~1.5 ms of a 4-5 ms start here. Costs ~30 ms more at import, ~1 MB of heap.
// index.ts imports this module first and calls endEagerCompile() once its imports loaded.
// (V8 may still flush, in a long-lived parent, bytecode that has not run for a while.)
import * as path from 'node:path';
import * as v8 from 'node:v8';

const userChoseNoLazy = process.execArgv.includes('--no-lazy') || /(^|\s)--no-lazy\b/.test(process.env.NODE_OPTIONS ?? '');
const isSpawnedChild = path.basename(require.main?.filename ?? '') === 'spawn_main.js';
const eager = process.execArgv.includes('--single-threaded') && !userChoseNoLazy && !isSpawnedChild;
if (eager) v8.setFlagsFromString('--no-lazy');

export function endEagerCompile(): void {
  if (eager) v8.setFlagsFromString('--lazy');
}
