// SharedMemory and ShareableList (Python's multiprocessing.shared_memory):
// named POSIX shared memory segments, mapped with no copy, seen as a Uint8Array.
import { mapFd, type MappedBuffer, shm, unmapNow } from './heap';
import { kReduce, registerRebuilder, type RebuildContext, type Reduced, type ReduceContext } from './reduction';
import { closeFds, lazyCrypto } from './util';

const NAME_PREFIX = 'psm_';
// Python: _SHM_SAFE_NAME_LENGTH = 14, including the leading '/'.
const SAFE_NAME_LENGTH = 14;

function makeFilename(): string {
  const nbytes = Math.floor((SAFE_NAME_LENGTH - NAME_PREFIX.length - 1) / 2);
  return '/' + NAME_PREFIX + lazyCrypto().randomBytes(nbytes).toString('hex');
}

// The resource tracker (src/resource_tracker.ts) cleans the segments of crashed
// processes. It is optional here: without it, nothing is registered.
interface Tracker {
  register(kind: 'shared_memory', name: string): void;
  unregister(kind: 'shared_memory', name: string): void;
}
let tracker: Tracker | null | undefined;
function getTracker(): Tracker | null {
  if (tracker === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const m = require('./resource_tracker') as Partial<Tracker>;
      tracker = typeof m.register === 'function' && typeof m.unregister === 'function' ? (m as Tracker) : null;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
      tracker = null;
    }
  }
  return tracker;
}

function track(op: 'register' | 'unregister', name: string): void {
  const t = getTracker();
  if (!t) return;
  try {
    t[op]('shared_memory', name);
  } catch {
    /* the tracker is best effort, as in Python */
  }
}

export interface SharedMemoryOptions {
  /** The segment's name (without the leading '/'); a random 'psm_...' when creating without one. */
  name?: string | null;
  /** Create a new segment (fails with EEXIST if the name exists). Default false: attach. */
  create?: boolean;
  /** Size in bytes when creating; ignored when attaching (the segment's own size is used). */
  size?: number;
  /** Register with the resource tracker, which unlinks the segment if this process dies without unlink(). Default true. */
  track?: boolean;
}

const fdCloser = new FinalizationRegistry<number>((fd) => closeFds([fd]));


/** A named block of shared memory (Python's SharedMemory). */
export class SharedMemory {
  private _name: string;
  private _size: number;
  private _fd: number;
  private _map: MappedBuffer | null;
  private _buf: Uint8Array | null;
  private readonly _track: boolean;

  constructor(options?: SharedMemoryOptions | string | null);
  /** @internal */
  constructor(options: SharedMemoryOptions, attach: { fd: number; name: string; size: number });
  constructor(options: SharedMemoryOptions | string | null = {}, attach?: { fd: number; name: string; size: number }) {
    const opts: SharedMemoryOptions = typeof options === 'string' ? { name: options } : (options ?? {});
    if (typeof opts !== 'object') throw new TypeError('new SharedMemory(options): options must be an object like { name, create, size }');
    const { name = null, create = false, size = 0, track: doTrack = true } = opts;
    this._track = doTrack;
    if (attach) {
      // Rebuilt in another process from an fd that travelled with the message.
      this._name = attach.name;
      this._fd = attach.fd;
      try {
        this._size = shm.fstatSize(this._fd);
        this._map = mapFd(this._fd, this._size);
      } catch (e) {
        closeFds([this._fd]);
        throw e;
      }
      this._buf = new Uint8Array(this._map.buffer, 0, this._size);
      fdCloser.register(this, this._fd, this);
      return;
    }
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
      throw new RangeError(`'size' must be a positive integer (got ${String(size)})`);
    }
    if (create && size === 0) throw new RangeError("'size' must be a positive number different from zero");
    if (name === null && !create) throw new TypeError("'name' can only be null if create is true");
    if (name !== null) {
      if (typeof name !== 'string') throw new TypeError(`'name' must be a string (got ${typeof name})`);
      if (name.includes('\0')) {
        throw Object.assign(new TypeError("'name' must not contain NUL characters"), { code: 'ERR_INVALID_ARG_VALUE' });
      }
    }
    let posixName: string;
    let fd: number;
    if (name === null) {
      for (;;) {
        posixName = makeFilename();
        try {
          fd = shm.shmOpen(posixName, true, true);
          break;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
          throw e;
        }
      }
    } else {
      posixName = '/' + name;
      try {
        fd = shm.shmOpen(posixName, create, create);
      } catch (e) {
        // As Python's FileExistsError/FileNotFoundError: the name in the message.
        const err = e as NodeJS.ErrnoException;
        if (typeof err.code === 'string') {
          err.message += `: '${posixName}'`;
          err.path = posixName;
        }
        throw e;
      }
    }
    this._name = posixName;
    this._fd = fd;
    try {
      if (create) shm.ftruncate(fd, size);
      this._size = shm.fstatSize(fd);
      this._map = mapFd(fd, this._size);
    } catch (e) {
      closeFds([fd]);
      if (create) {
        try {
          shm.shmUnlink(posixName);
        } catch {
          /* gone */
        }
      }
      throw e;
    }
    this._buf = new Uint8Array(this._map.buffer, 0, this._size);
    fdCloser.register(this, fd, this);
    if (create && doTrack) track('register', posixName);
  }

  /** The memory, as a Uint8Array view (no copy). Throws after close(). */
  get buf(): Uint8Array {
    if (!this._buf) throw new Error(`SharedMemory '${this.name}' is closed: its buf is gone`);
    return this._buf;
  }

  /** Unique name of the segment (as given, without the leading '/'). */
  get name(): string {
    return this._name.startsWith('/') ? this._name.slice(1) : this._name;
  }

  /** Size in bytes. */
  get size(): number {
    return this._size;
  }

  get closed(): boolean {
    return this._buf === null;
  }

  /**
   * Closes access from this object: the fd is closed and the mapping released at
   * once (views of `buf` become empty), without destroying the segment.
   */
  close(): void {
    if (this._buf) {
      this._buf = null;
      if (this._map) unmapNow(this._map);
      this._map = null;
    }
    if (this._fd >= 0) {
      fdCloser.unregister(this);
      closeFds([this._fd]);
      this._fd = -1;
    }
  }

  /** Destroys the segment's name (call once across all processes); the memory lives while mapped. */
  unlink(): void {
    shm.shmUnlink(this._name);
    if (this._track) track('unregister', this._name);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  toString(): string {
    return `SharedMemory('${this.name}', size=${this.size})`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }

  [kReduce](ctx: ReduceContext): Reduced {
    // Children started by spawn/forkserver get the fd too (works even after unlink);
    // over a Connection/Queue it travels by name, as in Python.
    const fd = ctx.method !== 'connection' && this._fd >= 0 ? ctx.addFd(this._fd) : -1;
    return { type: 'mp.SharedMemory', state: { name: this._name, size: this._size, fd } };
  }
}

registerRebuilder('mp.SharedMemory', (s: { name: string; size: number; fd: number }, ctx: RebuildContext) => {
  if (s.fd >= 0) return new SharedMemory({ track: false }, { fd: ctx.fd(s.fd), name: s.name, size: s.size });
  return new SharedMemory({ name: s.name.startsWith('/') ? s.name.slice(1) : s.name, track: false });
});

// ---------------------------------------------------------------------------
// ShareableList, with Python's layout (a Python process can attach to it):
//   8 bytes: number of items N (int64)
//   (N + 1) * 8 bytes: offsets of each item from the start of the data area
//   K bytes: the data area
//   N * 8 bytes: struct format of each item ('q', 'd', 'xxxxxxx?', '16s', ...)
//   N bytes: how to read each item back (0 as is, 1 str, 2 bytes, 3 None)

export type ShareableValue = number | bigint | boolean | string | Buffer | Uint8Array | null;

const ALIGN = 8;
const enum Back { Plain = 0, Str = 1, Bytes = 2, None = 3 }

const FMT_INT = 'q';
const FMT_FLOAT = 'd';
const FMT_BOOL = 'xxxxxxx?';
const FMT_NONE = 'xxxxxx?x';

function formatOf(v: ShareableValue): { fmt: string; back: Back; encoded?: Buffer } {
  if (v === null || v === undefined) return { fmt: FMT_NONE, back: Back.None };
  if (typeof v === 'boolean') return { fmt: FMT_BOOL, back: Back.Plain };
  if (typeof v === 'bigint') {
    if (v < -(2n ** 63n) || v >= 2n ** 63n) throw new RangeError(`ShareableList integers are 64-bit: ${v} does not fit`);
    return { fmt: FMT_INT, back: Back.Plain };
  }
  if (typeof v === 'number') {
    if (Number.isInteger(v) && Math.abs(v) < 2 ** 63) return { fmt: FMT_INT, back: Back.Plain };
    return { fmt: FMT_FLOAT, back: Back.Plain };
  }
  if (typeof v === 'string') {
    const encoded = Buffer.from(v, 'utf8');
    return { fmt: `${ALIGN * (Math.floor(encoded.length / ALIGN) + 1)}s`, back: Back.Str, encoded };
  }
  if (v instanceof Uint8Array) {
    const encoded = Buffer.from(v);
    return { fmt: `${ALIGN * (Math.floor(encoded.length / ALIGN) + 1)}s`, back: Back.Bytes, encoded };
  }
  throw new TypeError(
    `ShareableList items must be numbers, bigints, booleans, strings, Buffers or null (got ${typeof v})`,
  );
}

function itemValue(v: ShareableValue): ShareableValue {
  return v instanceof Uint8Array ? Buffer.from(v) : v;
}

function equal(a: ShareableValue, b: ShareableValue): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.compare(a, b) === 0;
  // eslint-disable-next-line eqeqeq
  if ((typeof a === 'bigint' || typeof a === 'number') && (typeof b === 'bigint' || typeof b === 'number')) return a == b;
  return a === b;
}

function toIndex(prop: string | symbol): number | null {
  if (typeof prop !== 'string' || prop.length === 0) return null;
  const c = prop.charCodeAt(0);
  if (c !== 45 && (c < 48 || c > 57)) return null;
  const n = Number(prop);
  return Number.isInteger(n) && String(n) === prop ? n : null;
}

/** A fixed-length list of numbers, strings, bytes, booleans and nulls in a SharedMemory (Python's ShareableList). */
export class ShareableListBase {
  readonly shm: SharedMemory;
  private readonly _len: number;
  private readonly _offsets: number[];
  private readonly _view: DataView;
  [index: number]: ShareableValue;

  constructor(sequence?: Iterable<ShareableValue> | null, options: { name?: string | null } = {}) {
    const name = options?.name ?? null;
    if (name === null || (sequence !== null && sequence !== undefined)) {
      const items = [...(sequence ?? [])];
      const formats = items.map(formatOf);
      this._len = items.length;
      let offset = 0;
      this._offsets = [0];
      for (const f of formats) {
        offset += f.fmt.endsWith('s') ? parseInt(f.fmt, 10) : ALIGN;
        this._offsets.push(offset);
      }
      const size = 8 + 8 * (this._len + 1) + offset + 8 * this._len + this._len;
      this.shm = new SharedMemory({ name, create: true, size });
      this._view = new DataView(this.shm.buf.buffer, this.shm.buf.byteOffset, this.shm.size);
      const dv = this._view;
      dv.setBigInt64(0, BigInt(this._len), true);
      for (let i = 0; i <= this._len; i++) dv.setBigInt64(8 + 8 * i, BigInt(this._offsets[i]), true);
      for (let i = 0; i < this._len; i++) this.writeItem(i, formats[i].fmt, formats[i].back, items[i], formats[i].encoded);
    } else {
      this.shm = new SharedMemory({ name });
      this._view = new DataView(this.shm.buf.buffer, this.shm.buf.byteOffset, this.shm.size);
      this._len = Number(this._view.getBigInt64(0, true));
      this._offsets = [];
      for (let i = 0; i <= this._len; i++) this._offsets.push(Number(this._view.getBigInt64(8 + 8 * i, true)));
    }
    return new Proxy(this, shareableListHandler);
  }

  /** @internal Rebuilds a list over a SharedMemory received from another process. */
  static _fromShm(s: SharedMemory): ShareableListBase {
    const self = Object.create(ShareableListBase.prototype) as ShareableListBase;
    const w = self as unknown as { shm: SharedMemory; _len: number; _offsets: number[]; _view: DataView };
    w.shm = s;
    w._view = new DataView(s.buf.buffer, s.buf.byteOffset, s.size);
    w._len = Number(w._view.getBigInt64(0, true));
    w._offsets = [];
    for (let i = 0; i <= w._len; i++) w._offsets.push(Number(w._view.getBigInt64(8 + 8 * i, true)));
    return new Proxy(self, shareableListHandler);
  }

  private get dataStart(): number {
    return (this._len + 2) * 8;
  }

  private get formatsStart(): number {
    return this.dataStart + this._offsets[this._len];
  }

  private get backStart(): number {
    return this.formatsStart + this._len * 8;
  }

  /** Number of items (read from the shared memory, as Python's len()). */
  get length(): number {
    return Number(this._view.getBigInt64(0, true));
  }

  private position(i: number): number {
    const p = i < 0 ? i + this._len : i;
    if (p < 0 || p >= this._len) throw new RangeError(`index ${i} out of range (length ${this._len})`);
    return p;
  }

  private formatAt(p: number): string {
    const start = this.formatsStart + p * 8;
    const bytes = Buffer.from(this._view.buffer, this._view.byteOffset + start, 8);
    const end = bytes.indexOf(0);
    return bytes.toString('utf8', 0, end < 0 ? 8 : end);
  }

  private writeItem(p: number, fmt: string, back: Back, value: ShareableValue, encoded?: Buffer): void {
    const dv = this._view;
    const fstart = this.formatsStart + p * 8;
    const fbytes = Buffer.alloc(8);
    fbytes.write(fmt, 'utf8');
    for (let k = 0; k < 8; k++) dv.setUint8(fstart + k, fbytes[k]);
    dv.setInt8(this.backStart + p, back);
    const off = this.dataStart + this._offsets[p];
    switch (fmt) {
      case FMT_INT:
        dv.setBigInt64(off, BigInt(value as number | bigint), true);
        return;
      case FMT_FLOAT:
        dv.setFloat64(off, value as number, true);
        return;
      case FMT_BOOL:
        for (let k = 0; k < 7; k++) dv.setUint8(off + k, 0);
        dv.setUint8(off + 7, value ? 1 : 0);
        return;
      case FMT_NONE:
        for (let k = 0; k < 8; k++) dv.setUint8(off + k, 0);
        return;
    }
    const n = parseInt(fmt, 10);
    const src = encoded ?? Buffer.alloc(0);
    for (let k = 0; k < n; k++) dv.setUint8(off + k, k < src.length ? src[k] : 0);
  }

  /** The item at `i` (negative counts from the end). */
  get(i: number): ShareableValue {
    const p = this.position(i);
    const fmt = this.formatAt(p);
    const back = this._view.getInt8(this.backStart + p) as Back;
    const off = this.dataStart + this._offsets[p];
    const dv = this._view;
    if (back === Back.None) return null;
    if (fmt === FMT_INT) {
      const v = dv.getBigInt64(off, true);
      return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    }
    if (fmt === FMT_FLOAT) return dv.getFloat64(off, true);
    if (fmt === FMT_BOOL) return dv.getUint8(off + 7) !== 0;
    if (fmt.endsWith('s')) {
      const n = parseInt(fmt, 10);
      let bytes = Buffer.from(dv.buffer, dv.byteOffset + off, n);
      let end = bytes.length;
      while (end > 0 && bytes[end - 1] === 0) end--;
      bytes = Buffer.from(bytes.subarray(0, end));
      return back === Back.Str ? bytes.toString('utf8') : bytes;
    }
    throw new Error(`ShareableList: unknown item format ${JSON.stringify(fmt)} at ${p}`);
  }

  /** Replaces the item at `i`; a string or Buffer must fit the slot allocated when the list was made. */
  set(i: number, value: ShareableValue): void {
    const p = this.position(i);
    const current = this.formatAt(p);
    const f = formatOf(value);
    let fmt = f.fmt;
    if (f.encoded) {
      const allocated = this._offsets[p + 1] - this._offsets[p];
      if (f.encoded.length > allocated) {
        throw new RangeError(
          `bytes/str item exceeds available storage: ${f.encoded.length} bytes for a slot of ${allocated} ` +
            '(a ShareableList cannot grow its items; size them when creating the list)',
        );
      }
      fmt = current.endsWith('s') ? current : `${allocated}s`;
    }
    this.writeItem(p, fmt, f.back, value, f.encoded);
  }

  /** The struct format of all items (Python's .format). */
  get format(): string {
    let s = '';
    for (let p = 0; p < this._len; p++) s += this.formatAt(p);
    return s;
  }

  count(value: ShareableValue): number {
    let n = 0;
    for (const v of this) if (equal(v, itemValue(value))) n++;
    return n;
  }

  index(value: ShareableValue): number {
    let p = 0;
    for (const v of this) {
      if (equal(v, itemValue(value))) return p;
      p++;
    }
    throw new RangeError(`${String(value)} not in this container`);
  }

  toArray(): ShareableValue[] {
    const out: ShareableValue[] = [];
    for (let p = 0; p < this._len; p++) out.push(this.get(p));
    return out;
  }

  *[Symbol.iterator](): IterableIterator<ShareableValue> {
    for (let p = 0; p < this._len; p++) yield this.get(p);
  }

  toString(): string {
    return `ShareableList(${JSON.stringify(this.toArray(), (_k, v) => (typeof v === 'bigint' ? `${v}` : v))}, name='${this.shm.name}')`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }

  [kReduce](): Reduced {
    return { type: 'mp.ShareableList', state: { shm: this.shm } };
  }
}

const shareableListHandler: ProxyHandler<ShareableListBase> = {
  get(target, prop, receiver) {
    const i = toIndex(prop);
    if (i === null) {
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' && prop !== 'constructor' ? v.bind(target) : v;
    }
    return target.get(i);
  },
  set(target, prop, value, receiver) {
    const i = toIndex(prop);
    if (i === null) return Reflect.set(target, prop, value, receiver);
    target.set(i, value);
    return true;
  },
  has(target, prop) {
    const i = toIndex(prop);
    if (i === null) return Reflect.has(target, prop);
    return i >= -target.length && i < target.length;
  },
};

registerRebuilder('mp.ShareableList', (s: { shm: SharedMemory }) => ShareableListBase._fromShm(s.shm));

export const ShareableList = ShareableListBase;
export type ShareableList = ShareableListBase;
