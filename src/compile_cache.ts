// The processes the library starts with a fresh node (a 'spawn' child, the forkserver)
// compile the library and their target's module on every start. Node 22.1+ can keep that
// compiled code on disk (module.enableCompileCache, the same cache NODE_COMPILE_CACHE
// turns on): a spawned child then starts ~15 ms sooner (of ~75 ms on Node 24 here). Quiet
// by design: where it cannot be used it does nothing, NODE_DISABLE_COMPILE_CACHE=1 turns it
// off, and NODE_COMPILE_CACHE still chooses the directory (default: os.tmpdir()).
// Imported first by spawn_main.ts and forkserver_main.ts, before the library loads.
import * as nodeModule from 'node:module';

const enableCompileCache = (nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache;
if (typeof enableCompileCache === 'function') {
  try {
    enableCompileCache();
  } catch {
    /* an optimization only */
  }
}
