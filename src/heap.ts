// Mappings of shared memory into this process, and the arena allocator behind
// Value/Array (Python's heap.py): small blocks are carved out of a few shared
// arenas, so a Value costs bytes, not a page and a file descriptor.
//
// Arenas are nameless memory files (memfd_create; elsewhere a shm name unlinked at
// once), so nothing is left in /dev/shm even if the process crashes. Children
// started by spawn/forkserver receive the arena's fd; fork children inherit the
// mapping itself.
import { native } from './native';
import type { RebuildContext, ReduceContext } from './reduction';
import { closeFds } from './util';

interface ShmNative {
  shmOpen(name: string, create: boolean, exclusive: boolean, mode?: number): number;
  shmUnlink(name: string): void;
  anonMemoryFile(size: number): number;
  ftruncate(fd: number, size: number): void;
  fstatSize(fd: number): number;
  mmap(fd: number, size: number): ArrayBuffer;
  mmapInto(fd: number, size: number, view: Uint8Array): void;
  detachArrayBuffer(buffer: ArrayBufferLike): boolean;
  shmStats(): { mappings: number; bytes: number };
  pageSize(): number;
}

/** @internal The native shared-memory functions (native/shared_memory.cc). */
export const shm = native as unknown as ShmNative;

export const PAGE_SIZE = shm.pageSize();
const WASM_PAGE = 65536;
const WASM_MAX_PAGES = 65536;

// Where external ArrayBuffers are not allowed (V8 sandbox), or when asked with
// NODE_MP_SHM_SAB=1, mappings are placed over the memory of a shared
// WebAssembly.Memory instead: the buffer is then a SharedArrayBuffer.
let useWasmMemory = process.env.NODE_MP_SHM_SAB === '1';

/** A mapping of a whole memory file: `buffer` is at least `size` bytes long. */
export interface MappedBuffer {
  buffer: ArrayBuffer | SharedArrayBuffer;
  /** true when close() can unmap at once (detach); else unmapped when collected. */
  detachable: boolean;
}

/** Maps `size` bytes of `fd` (MAP_SHARED) with no copy; unmapped when the buffer is collected or detached. */
export function mapFd(fd: number, size: number): MappedBuffer {
  if (!useWasmMemory) {
    try {
      return { buffer: shm.mmap(fd, size), detachable: true };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ERR_EXTERNAL_BUFFERS') throw e;
      useWasmMemory = true;
    }
  }
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  if (pages > WASM_MAX_PAGES) {
    throw new RangeError(
      `cannot map ${size} bytes: this Node build does not allow external ArrayBuffers, and the fallback ` +
        '(a shared WebAssembly.Memory) is limited to 4 GiB',
    );
  }
  const WA = (globalThis as unknown as { WebAssembly: { Memory: new (d: object) => { buffer: SharedArrayBuffer } } }).WebAssembly;
  const mem = new WA.Memory({ initial: pages, maximum: pages, shared: true });
  shm.mmapInto(fd, size, new Uint8Array(mem.buffer));
  return { buffer: mem.buffer, detachable: false };
}

/** Releases a mapping now if possible (views become empty); otherwise when collected. */
export function unmapNow(m: MappedBuffer): void {
  if (m.detachable) shm.detachArrayBuffer(m.buffer);
}

// ---------------------------------------------------------------------------
// Arenas

const fdCloser = new FinalizationRegistry<number>((fd) => closeFds([fd]));

let arenaCounter = 0;

/** One shared memory file mapped in this process. */
export class Arena {
  fd: number;
  readonly u8: Uint8Array;
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  /** Blocks allocated from this arena by this process's heap (only in the creator). */
  readonly blocks = new Map<number, Block>();
  freeList: Array<[number, number]> = [];

  constructor(
    readonly id: string,
    readonly size: number,
    fd: number,
    readonly owner: Heap | null,
  ) {
    this.fd = fd;
    this.buffer = mapFd(fd, size).buffer;
    this.u8 = new Uint8Array(this.buffer, 0, size);
    fdCloser.register(this, fd, this);
  }

  closeFd(): void {
    if (this.fd < 0) return;
    fdCloser.unregister(this);
    closeFds([this.fd]);
    this.fd = -1;
  }
}

export interface Block {
  arena: Arena;
  start: number;
  stop: number;
  /** Live views of this block in this process. */
  refs: number;
}

const ALIGN = 16;
const DOUBLE_ARENA_SIZE_UNTIL = 4 * 1024 * 1024;

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Arenas mapped in this process by id: received ones and our own. */
const arenasById = new Map<string, WeakRef<Arena>>();
const arenaIdCleanup = new FinalizationRegistry<string>((id) => {
  const ref = arenasById.get(id);
  if (ref && ref.deref() === undefined) arenasById.delete(id);
});

function rememberArena(a: Arena): void {
  arenasById.set(a.id, new WeakRef(a));
  arenaIdCleanup.register(a, a.id);
}

export class Heap {
  private pid = native.getpid();
  private arenas: Arena[] = [];
  private nextSize = PAGE_SIZE;
  nMallocs = 0;
  nFrees = 0;

  /** Arenas this heap holds (tests and diagnostics). */
  get arenaCount(): number {
    return this.arenas.length;
  }

  private checkPid(): void {
    const pid = native.getpid();
    if (pid !== this.pid) {
      // A forked child: the arenas are the parent's to allocate from; start afresh
      // (views inherited from the parent keep working, as in CPython).
      this.pid = pid;
      this.arenas = [];
      this.nextSize = PAGE_SIZE;
    }
  }

  private newArena(size: number): Arena {
    const length = roundUp(Math.max(this.nextSize, size), PAGE_SIZE);
    if (this.nextSize < DOUBLE_ARENA_SIZE_UNTIL) this.nextSize *= 2;
    const fd = shm.anonMemoryFile(length);
    let arena: Arena;
    try {
      arena = new Arena(`${this.pid}-${++arenaCounter}-${Math.random().toString(36).slice(2, 10)}`, length, fd, this);
    } catch (e) {
      closeFds([fd]);
      throw e;
    }
    arena.freeList.push([0, length]);
    this.arenas.push(arena);
    rememberArena(arena);
    return arena;
  }

  /** A zero-filled block of at least `size` bytes, aligned to 16. */
  malloc(size: number): Block {
    if (!(size >= 0) || !Number.isSafeInteger(size)) throw new RangeError(`size ${size} out of range`);
    this.checkPid();
    this.nMallocs++;
    const want = roundUp(Math.max(size, 1), ALIGN);
    for (let ai = this.arenas.length - 1; ai >= 0; ai--) {
      const block = this.carve(this.arenas[ai], want);
      if (block) return block;
    }
    const arena = this.newArena(want);
    return this.carve(arena, want)!;
  }

  private carve(arena: Arena, want: number): Block | null {
    const fl = arena.freeList;
    for (let i = 0; i < fl.length; i++) {
      const [start, stop] = fl[i];
      if (stop - start < want) continue;
      if (stop - start === want) fl.splice(i, 1);
      else fl[i] = [start + want, stop];
      const block: Block = { arena, start, stop: start + want, refs: 0 };
      arena.blocks.set(start, block);
      arena.u8.fill(0, start, start + want);
      return block;
    }
    return null;
  }

  /** Returns a block; an arena with nothing allocated is released. */
  free(block: Block): void {
    const arena = block.arena;
    if (arena.owner !== this || native.getpid() !== this.pid || !this.arenas.includes(arena)) return;
    if (arena.blocks.get(block.start) !== block) return;
    this.nFrees++;
    arena.blocks.delete(block.start);
    if (arena.blocks.size === 0) {
      this.arenas.splice(this.arenas.indexOf(arena), 1);
      arena.freeList = [];
      arena.closeFd();
      return;
    }
    const fl = arena.freeList;
    // Insert in order of start, merging with neighbours.
    let lo = 0;
    let hi = fl.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (fl[mid][0] < block.start) lo = mid + 1;
      else hi = mid;
    }
    let start = block.start;
    let stop = block.stop;
    if (lo < fl.length && fl[lo][0] === stop) {
      stop = fl[lo][1];
      fl.splice(lo, 1);
    }
    if (lo > 0 && fl[lo - 1][1] === start) {
      start = fl[lo - 1][0];
      fl.splice(lo - 1, 1);
      lo--;
    }
    fl.splice(lo, 0, [start, stop]);
  }
}

export const heap = new Heap();

// A block lives while any view of it does (the view object is what users hold).
const blockFinalizer = new FinalizationRegistry<Block>((block) => {
  if (--block.refs <= 0) block.arena.owner?.free(block);
});

/** Records that `view` uses `block`: the block is freed when every such view is collected. */
export function holdBlock(view: object, block: Block): void {
  block.refs++;
  blockFinalizer.register(view, block);
}

/** A shared block: allocation in this process's heap. */
export function allocBlock(size: number): Block {
  return heap.malloc(size);
}

export interface ReducedBlock {
  id: string;
  size: number;
  fd: number;
  start: number;
  stop: number;
}

/** The state that lets another process map `block` (its arena's fd travels with the message). */
export function reduceBlock(block: Block, ctx: ReduceContext, what: string): ReducedBlock {
  if (ctx.method === 'connection') {
    throw new TypeError(
      `${what} objects can only be shared with child processes through inheritance: pass it in the Process ` +
        "args (or a Pool initializer's initargs), not through a Queue or Connection. To send shared memory " +
        'to an existing process, use a SharedMemory and send it (it travels by name)',
    );
  }
  const arena = block.arena;
  if (arena.fd < 0) throw new Error(`${what}: its shared memory was already released`);
  return { id: arena.id, size: arena.size, fd: ctx.addFd(arena.fd), start: block.start, stop: block.stop };
}

/** Maps the block described by `state` in this process (reusing an arena mapped already). */
export function rebuildBlock(state: ReducedBlock, ctx: RebuildContext): Block {
  const fd = ctx.fd(state.fd);
  let arena = arenasById.get(state.id)?.deref();
  if (arena && arena.fd >= 0) {
    closeFds([fd]);
  } else {
    arena = new Arena(state.id, state.size, fd, null);
    rememberArena(arena);
  }
  const own = arena.owner ? arena.blocks.get(state.start) : undefined;
  if (own) return own;
  return { arena, start: state.start, stop: state.stop, refs: 0 };
}
