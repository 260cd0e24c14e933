// Value, Array, RawValue, RawArray (Python's sharedctypes.py): typed data in
// shared memory, allocated from the arenas of ./heap, seen as typed-array views.
//
// - RawArray returns a typed array (a subclass of Float64Array, Int32Array, ...)
//   over the shared block: element access runs at typed-array speed.
// - RawValue returns an object with a `value` accessor over a 1-element view.
// - Value/Array wrap those with a lock (an RLock by default): every access of
//   `value` / `arr[i]` takes the lock, as Python's Synchronized* do.
import {
  allocBlock, type Block, holdBlock, rebuildBlock, reduceBlock, type ReducedBlock,
} from './heap';
import { kReduce, registerRebuilder, type RebuildContext, type Reduced, type ReduceContext } from './reduction';

export type Typecode = 'b' | 'B' | 'h' | 'H' | 'i' | 'I' | 'l' | 'L' | 'q' | 'Q' | 'f' | 'd' | 'c';

type TypedArrayCtor =
  | Int8ArrayConstructor | Uint8ArrayConstructor | Int16ArrayConstructor | Uint16ArrayConstructor
  | Int32ArrayConstructor | Uint32ArrayConstructor | BigInt64ArrayConstructor | BigUint64ArrayConstructor
  | Float32ArrayConstructor | Float64ArrayConstructor;

export type SharedTypedArray =
  | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array
  | Float32Array | Float64Array;

/** C `long` is 64-bit on LP64 (Linux, macOS), 32-bit on Windows (as ctypes). */
// This module exports a function named Array: the built-in is JSArray here.
const JSArray = globalThis.Array;

const longIs64 = process.platform !== 'win32';

const baseTypes: Record<Typecode, TypedArrayCtor> = {
  b: Int8Array, B: Uint8Array, h: Int16Array, H: Uint16Array, i: Int32Array, I: Uint32Array,
  l: longIs64 ? BigInt64Array : Int32Array, L: longIs64 ? BigUint64Array : Uint32Array,
  q: BigInt64Array, Q: BigUint64Array, f: Float32Array, d: Float64Array, c: Uint8Array,
};

const kBlock = Symbol('node-multiprocessing.block');
const kTypecode = Symbol('node-multiprocessing.typecode');

function checkTypecode(typecode: unknown): Typecode {
  if (typeof typecode !== 'string' || !Object.prototype.hasOwnProperty.call(baseTypes, typecode)) {
    throw new TypeError(
      `unknown typecode ${JSON.stringify(typecode)}: use one of b B h H i I l L q Q f d c (as Python's array module)`,
    );
  }
  return typecode as Typecode;
}

function isBigCode(tc: Typecode): boolean {
  return baseTypes[tc] === BigInt64Array || baseTypes[tc] === BigUint64Array;
}

/** Converts a JS value for storing under `tc` (wrapping on overflow, as ctypes does). */
function coerce(tc: Typecode, v: unknown): number | bigint {
  if (tc === 'c') {
    if (typeof v === 'string') {
      if (v.length !== 1) throw new TypeError(`a 'c' item must be one byte (got the string ${JSON.stringify(v)})`);
      return v.charCodeAt(0) & 0xff;
    }
    if (v instanceof Uint8Array) {
      if (v.length !== 1) throw new TypeError(`a 'c' item must be one byte (got ${v.length} bytes)`);
      return v[0];
    }
    if (typeof v === 'number' && Number.isInteger(v)) return v;
    throw new TypeError(`a 'c' item must be a 1-byte Buffer, a 1-character string or a byte value (got ${typeof v})`);
  }
  if (isBigCode(tc)) {
    if (typeof v === 'bigint') return v;
    if (typeof v === 'number') {
      if (!Number.isInteger(v)) throw new TypeError(`typecode '${tc}' needs an integer (got ${v})`);
      return BigInt(v);
    }
    if (typeof v === 'boolean') return v ? 1n : 0n;
    throw new TypeError(`typecode '${tc}' needs a bigint or an integer number (got ${typeof v})`);
  }
  if (typeof v === 'number') {
    if (tc !== 'f' && tc !== 'd' && !Number.isInteger(v) && Number.isFinite(v)) {
      throw new TypeError(`typecode '${tc}' needs an integer (got ${v})`);
    }
    return v;
  }
  if (typeof v === 'bigint') return tc === 'f' || tc === 'd' ? Number(v) : Number(BigInt.asIntN(64, v));
  if (typeof v === 'boolean') return v ? 1 : 0;
  throw new TypeError(`typecode '${tc}' needs a number (got ${typeof v})`);
}

// ---------------------------------------------------------------------------
// RawArray: typed-array subclasses that know their shared block

interface RawArrayMethods {
  /** The typed-array view itself (Python's get_obj()). */
  getObj(): this;
  readonly typecode: Typecode;
}

export type RawArray<T extends SharedTypedArray = SharedTypedArray> = T & RawArrayMethods;
/** A RawArray('c', ...): bytes, with `value` (up to the first NUL) and `raw` as Buffers. */
export type RawCharArray = RawArray<Uint8Array> & { value: Buffer; raw: Buffer };

function makeRawClass(tc: Typecode): new (buffer: ArrayBufferLike, byteOffset: number, length: number) => RawArray {
  const Base = baseTypes[tc] as unknown as new (...args: any[]) => Float64Array;
  const cls = class extends Base {
    getObj(): this {
      return this;
    }
    get typecode(): Typecode {
      return tc;
    }
    [kReduce](ctx: ReduceContext): Reduced {
      const block = (this as unknown as { [kBlock]?: Block })[kBlock];
      if (!block) {
        // A copy made by slice()/map()/...: not shared; it travels by value.
        return { type: 'mp.RawArrayCopy', state: { typecode: tc, data: new (baseTypes[tc] as any)(this) } };
      }
      return {
        type: 'mp.RawArray',
        state: { typecode: tc, block: reduceBlock(block, ctx, 'RawArray'), byteOffset: this.byteOffset - block.start, length: this.length },
      };
    }
  };
  if (tc === 'c') {
    Object.defineProperties(cls.prototype, {
      value: {
        get(this: Uint8Array) {
          const end = this.indexOf(0);
          return Buffer.from(this.subarray(0, end < 0 ? this.length : end));
        },
        set(this: Uint8Array, v: Uint8Array | string) {
          const bytes = typeof v === 'string' ? Buffer.from(v, 'latin1') : v;
          if (bytes.length > this.length) throw new RangeError(`byte string too long (${bytes.length} > ${this.length})`);
          this.set(bytes);
          if (bytes.length < this.length) this[bytes.length] = 0;
        },
      },
      raw: {
        get(this: Uint8Array) {
          return Buffer.from(this);
        },
        set(this: Uint8Array, v: Uint8Array | string) {
          const bytes = typeof v === 'string' ? Buffer.from(v, 'latin1') : v;
          if (bytes.length > this.length) throw new RangeError(`byte string too long (${bytes.length} > ${this.length})`);
          this.set(bytes);
        },
      },
    });
  }
  Object.defineProperty(cls, 'name', { value: `Raw${Base.name}` });
  return cls as any;
}

const rawClasses = Object.fromEntries(
  (Object.keys(baseTypes) as Typecode[]).map((tc) => [tc, makeRawClass(tc)]),
) as Record<Typecode, ReturnType<typeof makeRawClass>>;

function viewOfBlock(tc: Typecode, block: Block, byteOffset: number, length: number): RawArray {
  const view = new rawClasses[tc](block.arena.buffer, block.start + byteOffset, length);
  Object.defineProperty(view, kBlock, { value: block });
  holdBlock(view, block);
  return view;
}

function newRawArray(tc: Typecode, length: number): RawArray {
  const block = allocBlock(length * baseTypes[tc].BYTES_PER_ELEMENT);
  return viewOfBlock(tc, block, 0, length);
}

/** Values for initializing an array of typecode `tc`; a number means a size. */
function initialValues(tc: Typecode, sizeOrValues: unknown): { length: number; values: ArrayLike<unknown> | null } {
  if (typeof sizeOrValues === 'number') {
    if (!Number.isSafeInteger(sizeOrValues) || sizeOrValues < 0) {
      throw new RangeError(`array size must be a non-negative integer (got ${sizeOrValues})`);
    }
    return { length: sizeOrValues, values: null };
  }
  if (typeof sizeOrValues === 'string') {
    if (tc !== 'c') throw new TypeError(`a string initializes only a 'c' array; for typecode '${tc}' pass numbers`);
    const b = Buffer.from(sizeOrValues, 'latin1');
    return { length: b.length, values: b };
  }
  if (sizeOrValues !== null && typeof sizeOrValues === 'object') {
    const values = ArrayBuffer.isView(sizeOrValues) || JSArray.isArray(sizeOrValues)
      ? (sizeOrValues as ArrayLike<unknown>)
      : Symbol.iterator in sizeOrValues ? [...(sizeOrValues as Iterable<unknown>)] : null;
    if (values) return { length: values.length, values };
  }
  throw new TypeError('sizeOrValues must be a length (number) or an array/iterable of initial values');
}

function fillFrom(view: RawArray, tc: Typecode, values: ArrayLike<unknown>): void {
  if (tc === 'c' && values instanceof Uint8Array) {
    (view as Uint8Array).set(values);
    return;
  }
  const target = view as unknown as { [i: number]: number | bigint };
  for (let i = 0; i < values.length; i++) target[i] = coerce(tc, values[i]);
}

/** A shared typed array with no lock (Python's RawArray); zero-filled unless values are given. */
export function RawArray(typecode: 'c', sizeOrValues: number | string | Uint8Array | Iterable<number>): RawCharArray;
export function RawArray(typecode: 'b', sizeOrValues: number | Iterable<number>): RawArray<Int8Array>;
export function RawArray(typecode: 'B', sizeOrValues: number | Iterable<number>): RawArray<Uint8Array>;
export function RawArray(typecode: 'h', sizeOrValues: number | Iterable<number>): RawArray<Int16Array>;
export function RawArray(typecode: 'H', sizeOrValues: number | Iterable<number>): RawArray<Uint16Array>;
export function RawArray(typecode: 'i', sizeOrValues: number | Iterable<number>): RawArray<Int32Array>;
export function RawArray(typecode: 'I', sizeOrValues: number | Iterable<number>): RawArray<Uint32Array>;
export function RawArray(typecode: 'q' | 'l', sizeOrValues: number | Iterable<bigint | number>): RawArray<BigInt64Array>;
export function RawArray(typecode: 'Q' | 'L', sizeOrValues: number | Iterable<bigint | number>): RawArray<BigUint64Array>;
export function RawArray(typecode: 'f', sizeOrValues: number | Iterable<number>): RawArray<Float32Array>;
export function RawArray(typecode: 'd', sizeOrValues: number | Iterable<number>): RawArray<Float64Array>;
export function RawArray(typecode: Typecode, sizeOrValues: unknown): RawArray;
export function RawArray(typecode: Typecode, sizeOrValues: unknown): RawArray {
  const tc = checkTypecode(typecode);
  const { length, values } = initialValues(tc, sizeOrValues);
  const view = newRawArray(tc, length);
  if (values) fillFrom(view, tc, values);
  return view;
}

registerRebuilder('mp.RawArray', (s: { typecode: Typecode; block: ReducedBlock; byteOffset: number; length: number }, ctx: RebuildContext) => {
  const block = rebuildBlock(s.block, ctx);
  return viewOfBlock(s.typecode, block, s.byteOffset, s.length);
});
registerRebuilder('mp.RawArrayCopy', (s: { typecode: Typecode; data: SharedTypedArray }) => {
  const cls = rawClasses[s.typecode] as unknown as new (src: SharedTypedArray) => RawArray;
  return new cls(s.data);
});

// ---------------------------------------------------------------------------
// RawValue

/** One shared item with no lock (Python's RawValue). */
export class RawValueObject<T = number | bigint | Buffer> {
  /** @internal */ readonly view: RawArray;

  /** @internal Use the RawValue(typecode, init) function. */
  constructor(view: RawArray) {
    this.view = view;
  }

  get typecode(): Typecode {
    return this.view.typecode;
  }

  get value(): T {
    const v = (this.view as unknown as { [i: number]: number | bigint })[0];
    return (this.view.typecode === 'c' ? Buffer.of(v as number) : v) as T;
  }

  set value(v: T) {
    (this.view as unknown as { [i: number]: number | bigint })[0] = coerce(this.view.typecode, v);
  }

  /** The 1-element typed-array view of the shared memory. */
  getObj(): RawArray {
    return this.view;
  }

  toString(): string {
    return `RawValue('${this.typecode}', ${String(this.value)})`;
  }

  [kReduce](): Reduced {
    return { type: 'mp.RawValue', state: { view: this.view } };
  }
}

registerRebuilder('mp.RawValue', (s: { view: RawArray }) => new RawValueObject(s.view));

type ValueType<C extends Typecode> = C extends 'q' | 'Q' | 'l' | 'L' ? bigint : C extends 'c' ? Buffer : number;
type ValueInit<C extends Typecode> = C extends 'q' | 'Q' | 'l' | 'L' ? bigint | number : C extends 'c' ? Buffer | string | number : number;

function newRawValue(typecode: Typecode, init: unknown): RawValue<any> {
  const tc = checkTypecode(typecode);
  const v = new RawValueObject(newRawArray(tc, 1));
  if (init !== undefined) v.value = init as never;
  return v;
}

/** One shared item with no lock, zero-filled unless `init` is given. */
export function RawValue<C extends Typecode>(typecode: C, init?: ValueInit<C>): RawValue<ValueType<C>> {
  return newRawValue(typecode, init);
}
export type RawValue<T = number | bigint | Buffer> = RawValueObject<T>;
// `x instanceof RawValue` works.
RawValue.prototype = RawValueObject.prototype;

// ---------------------------------------------------------------------------
// Locks

/** What a Value/Array needs of its lock. */
export interface LockLike {
  acquire(opts?: { block?: boolean; timeout?: number | null }): Promise<boolean>;
  acquireSync(opts?: { block?: boolean; timeout?: number | null }): boolean;
  release(): void;
}

function isLockLike(x: unknown): x is LockLike {
  return x !== null && typeof x === 'object' && typeof (x as LockLike).acquireSync === 'function' &&
    typeof (x as LockLike).release === 'function';
}

let lockFactory: (() => LockLike) | null = null;

/**
 * @internal Sets how the default lock of Value/Array is made (an RLock). Without a
 * call, ./synchronize is loaded on first use.
 */
export function setDefaultLockFactory(make: () => LockLike): void {
  lockFactory = make;
}

function defaultLock(): LockLike {
  if (!lockFactory) {
    let sync: { RLock?: new () => LockLike };
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      sync = require('./synchronize');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
      sync = {};
    }
    if (typeof sync.RLock !== 'function') {
      throw new Error('Value/Array with a lock need RLock, which this build lacks; pass { lock: false } or a lock');
    }
    const RLock = sync.RLock;
    lockFactory = () => new RLock();
  }
  return lockFactory();
}

function resolveLock(lock: unknown): LockLike | null {
  if (lock === undefined || lock === null || lock === true) return defaultLock();
  if (lock === false) return null;
  if (isLockLike(lock)) return lock;
  throw new TypeError('lock must be true, false, or a Lock/RLock (an object with acquire(), acquireSync() and release())');
}

interface LockOptions {
  /** true (default): a new RLock; false: no lock (raw object); or the Lock/RLock to use. */
  lock?: boolean | LockLike;
}

function withLock<R>(lock: LockLike, fn: () => R): R {
  lock.acquireSync();
  try {
    return fn();
  } finally {
    lock.release();
  }
}

// ---------------------------------------------------------------------------
// Synchronized wrappers

abstract class SynchronizedBase {
  /** @internal */ readonly lock: LockLike;

  constructor(lock: LockLike) {
    this.lock = lock;
  }

  getLock(): LockLike {
    return this.lock;
  }

  acquire(opts?: { block?: boolean; timeout?: number | null }): Promise<boolean> {
    return this.lock.acquire(opts);
  }

  acquireSync(opts?: { block?: boolean; timeout?: number | null }): boolean {
    return this.lock.acquireSync(opts);
  }

  release(): void {
    this.lock.release();
  }
}

/** A Value with a lock: reads and writes of `value` hold it (Python's Synchronized). */
export class SynchronizedValue<T = number | bigint | Buffer> extends SynchronizedBase {
  /** @internal */ readonly _obj: RawValue<T>;

  /** @internal Use the Value(typecode, init, { lock }) function. */
  constructor(raw: RawValue<T>, lock: LockLike) {
    super(lock);
    this._obj = raw;
  }

  get typecode(): Typecode {
    return this._obj.typecode;
  }

  get value(): T {
    const lock = this.lock;
    lock.acquireSync();
    try {
      return this._obj.value;
    } finally {
      lock.release();
    }
  }

  set value(v: T) {
    const lock = this.lock;
    lock.acquireSync();
    try {
      this._obj.value = v;
    } finally {
      lock.release();
    }
  }

  /** The 1-element typed-array view (no lock). */
  getObj(): RawArray {
    return this._obj.getObj();
  }

  override toString(): string {
    return `Synchronized(RawValue('${this.typecode}', ${String(this.value)}))`;
  }

  [kReduce](): Reduced {
    return { type: 'mp.SynchronizedValue', state: { obj: this._obj, lock: this.lock } };
  }
}

registerRebuilder('mp.SynchronizedValue', (s: { obj: RawValue; lock: LockLike }) => new SynchronizedValue(s.obj, s.lock));

/** Value: a shared item with a lock (an RLock unless `lock` says otherwise); `{ lock: false }` gives a RawValue. */
export function Value<C extends Typecode>(typecode: C, init: ValueInit<C> | undefined, opts: { lock: false }): RawValue<ValueType<C>>;
export function Value<C extends Typecode>(typecode: C, init?: ValueInit<C>, opts?: LockOptions): SynchronizedValue<ValueType<C>>;
export function Value(typecode: Typecode, init?: unknown, opts: LockOptions = {}): RawValue<any> | SynchronizedValue<any> {
  if (opts === null || typeof opts !== 'object') throw new TypeError('options must be an object like { lock }');
  const lock = resolveLock(opts.lock);
  const raw = newRawValue(typecode, init);
  return lock ? new SynchronizedValue(raw, lock) : raw;
}

/** Properties of a SynchronizedArray besides its elements. */
export class SynchronizedArrayBase<E = number | bigint> extends SynchronizedBase {
  /** @internal */ readonly _obj: RawArray;
  [index: number]: E;

  /** @internal Use the Array(typecode, sizeOrValues, { lock }) function. */
  constructor(raw: RawArray, lock: LockLike) {
    super(lock);
    this._obj = raw;
  }

  get typecode(): Typecode {
    return this._obj.typecode;
  }

  get length(): number {
    return this._obj.length;
  }

  /** The typed-array view of the shared memory (no lock). */
  getObj(): RawArray {
    return this._obj;
  }

  /** A copy of elements [start, end) taken under the lock (a plain typed array). */
  slice(start?: number, end?: number): SharedTypedArray {
    const raw = this._obj;
    return withLock(this.lock, () => {
      const Base = baseTypes[raw.typecode] as any;
      return new Base(raw.subarray(start, end)) as SharedTypedArray;
    });
  }

  /** Writes `values` from `offset` under the lock. */
  set(values: ArrayLike<E>, offset = 0): void {
    const raw = this._obj;
    const tc = raw.typecode;
    withLock(this.lock, () => {
      if (ArrayBuffer.isView(values) && !(raw instanceof BigInt64Array || raw instanceof BigUint64Array)) {
        raw.set(values as unknown as ArrayLike<number>, offset);
        return;
      }
      if (offset < 0 || offset + values.length > raw.length) throw new RangeError('offset is out of bounds');
      const t = raw as unknown as { [i: number]: number | bigint };
      for (let i = 0; i < values.length; i++) t[offset + i] = coerce(tc, values[i]);
    });
  }

  /** For 'c' arrays: the bytes up to the first NUL (Python's .value). */
  get value(): Buffer {
    return withLock(this.lock, () => (this._obj as RawCharArray).value);
  }

  set value(v: Buffer) {
    withLock(this.lock, () => {
      (this._obj as RawCharArray).value = v;
    });
  }

  /** For 'c' arrays: all the bytes (Python's .raw). */
  get raw(): Buffer {
    return withLock(this.lock, () => Buffer.from(this._obj as Uint8Array));
  }

  set raw(v: Buffer) {
    withLock(this.lock, () => {
      (this._obj as RawCharArray).raw = v;
    });
  }

  /** A snapshot of the elements, taken under the lock. */
  toArray(): E[] {
    return withLock(this.lock, () => JSArray.from(this._obj as unknown as ArrayLike<E>));
  }

  *[Symbol.iterator](): IterableIterator<E> {
    yield* this.toArray();
  }

  override toString(): string {
    return `Synchronized(RawArray('${this.typecode}', [${this.toArray().join(', ')}]))`;
  }

  [kReduce](): Reduced {
    return { type: 'mp.SynchronizedArray', state: { obj: this._obj, lock: this.lock } };
  }
}

export type SynchronizedArray<E = number | bigint> = SynchronizedArrayBase<E>;

function indexOf(prop: string | symbol): number {
  if (typeof prop !== 'string' || prop.length === 0) return -1;
  const c = prop.charCodeAt(0);
  if (c < 48 || c > 57) return -1;
  const n = Number(prop);
  return Number.isInteger(n) && String(n) === prop ? n : -1;
}

const arrayHandler: ProxyHandler<SynchronizedArrayBase<any>> = {
  get(target, prop, receiver) {
    const i = indexOf(prop);
    if (i < 0) return Reflect.get(target, prop, receiver);
    const raw = target._obj as unknown as { [i: number]: unknown; length: number };
    if (i >= raw.length) return undefined;
    const lock = target.lock;
    lock.acquireSync();
    try {
      return raw[i];
    } finally {
      lock.release();
    }
  },
  set(target, prop, value, receiver) {
    const i = indexOf(prop);
    if (i < 0) return Reflect.set(target, prop, value, receiver);
    const raw = target._obj as unknown as { [i: number]: unknown; length: number };
    if (i >= raw.length) throw new RangeError(`index ${i} out of range (length ${raw.length})`);
    const v = coerce(target._obj.typecode, value);
    const lock = target.lock;
    lock.acquireSync();
    try {
      raw[i] = v;
    } finally {
      lock.release();
    }
    return true;
  },
  has(target, prop) {
    const i = indexOf(prop);
    if (i < 0) return Reflect.has(target, prop);
    return i < target._obj.length;
  },
};

function synchronizedArray(raw: RawArray, lock: LockLike): SynchronizedArrayBase<any> {
  return new Proxy(new SynchronizedArrayBase(raw, lock), arrayHandler);
}

registerRebuilder('mp.SynchronizedArray', (s: { obj: RawArray; lock: LockLike }) => synchronizedArray(s.obj, s.lock));

type ElemType<C extends Typecode> = C extends 'q' | 'Q' | 'l' | 'L' ? bigint : number;

/** Array: a shared typed array with a lock (an RLock unless `lock` says otherwise); `{ lock: false }` gives a RawArray. */
export function Array<C extends Typecode>(typecode: C, sizeOrValues: number | Iterable<unknown> | string, opts: { lock: false }): RawArray;
export function Array<C extends Typecode>(typecode: C, sizeOrValues: number | Iterable<unknown> | string, opts?: LockOptions): SynchronizedArray<ElemType<C>>;
export function Array(typecode: Typecode, sizeOrValues: unknown, opts: LockOptions = {}): RawArray | SynchronizedArray<any> {
  if (opts === null || typeof opts !== 'object') throw new TypeError('options must be an object like { lock }');
  const lock = resolveLock(opts.lock);
  const raw = RawArray(typecode, sizeOrValues);
  return lock ? synchronizedArray(raw, lock) : raw;
}

/** Python's copy(): a new RawValue/RawArray... with the same contents. */
export function copy<T extends RawValue<any> | RawArray>(obj: T): T {
  if (obj instanceof RawValueObject) return newRawValue(obj.typecode, obj.value) as T;
  const raw = obj as RawArray;
  const out = newRawArray(raw.typecode, raw.length);
  (out as any).set(raw);
  return out as T;
}

/** Python's synchronized(): wraps a raw object with a lock. */
export function synchronized<T>(obj: RawValue<T>, lock?: LockLike): SynchronizedValue<T>;
export function synchronized(obj: RawArray, lock?: LockLike): SynchronizedArray;
export function synchronized(obj: RawValue<any> | RawArray, lock?: LockLike): SynchronizedValue<any> | SynchronizedArray {
  const l = lock ?? defaultLock();
  if (obj instanceof RawValueObject) return new SynchronizedValue(obj, l);
  return synchronizedArray(obj, l);
}
