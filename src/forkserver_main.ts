// Entry point of the forkserver process (started by ForkServer with --single-threaded).
import './compile_cache';
import * as v8 from 'node:v8';
import './index';
import { serverMain } from './forkserver';

// The library was compiled whole as it loaded (eager_compile.ts) so that children do not
// compile it again; most of that code never runs here, and flushing it would undo that.
v8.setFlagsFromString('--no-flush-bytecode');

void serverMain();
