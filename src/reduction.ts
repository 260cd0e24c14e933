// How values cross process boundaries: the V8 serializer, plus a reduce/rebuild
// protocol for library objects that own OS resources (fds, semaphore and segment
// names), plus function transport by reference or by source (as pickle does).
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import * as v8 from 'node:v8';
import { analyseFunctionSource } from './function_source';

export type StartMethod = 'fork' | 'forkserver' | 'spawn';

/** Library objects implement this to be sent to other processes. */
export const kReduce = Symbol.for('node-multiprocessing.reduce');

export interface ReduceContext {
  readonly method: StartMethod | 'connection';
  /** Adds an fd to travel with the message; returns its index for the rebuilder. */
  addFd(fd: number): number;
}

export interface RebuildContext {
  readonly method: StartMethod | 'connection';
  /** The fd (in this process) that travelled at `index`. */
  fd(index: number): number;
}

export interface Reduced {
  type: string;
  state: unknown;
}

export interface Reducible {
  [kReduce](ctx: ReduceContext): Reduced;
}

const rebuilders = new Map<string, (state: any, ctx: RebuildContext) => unknown>();

/** Registers how to rebuild a reduced object of `type` in the receiving process. */
export function registerRebuilder(type: string, rebuild: (state: any, ctx: RebuildContext) => unknown): void {
  rebuilders.set(type, rebuild);
}

const MARK = '__nodeMultiprocessingReduced__';

function isReducible(v: object): v is Reducible {
  return typeof (v as Partial<Reducible>)[kReduce] === 'function';
}

function isPlainContainer(v: object): boolean {
  if (Array.isArray(v) || v instanceof Map || v instanceof Set) return true;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Replaces library objects by their reduced form (copying only what contains them). */
function reduceDeep(value: unknown, ctx: ReduceContext, memo: Map<object, unknown>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (memo.has(value)) return memo.get(value);
  if (isReducible(value)) {
    const r = value[kReduce](ctx);
    const marked = { [MARK]: r.type, state: reduceDeep(r.state, ctx, memo) };
    memo.set(value, marked);
    return marked;
  }
  if (!isPlainContainer(value)) return value;
  memo.set(value, value);
  let out: unknown = value;
  if (Array.isArray(value)) {
    const copy = value.slice();
    let changed = false;
    for (let i = 0; i < value.length; i++) {
      const r = reduceDeep(value[i], ctx, memo);
      if (r !== value[i]) { copy[i] = r; changed = true; }
    }
    if (changed) out = copy;
  } else if (value instanceof Map) {
    const entries = [...value].map(([k, v]) => [reduceDeep(k, ctx, memo), reduceDeep(v, ctx, memo)] as const);
    if (entries.some(([k, v], i) => k !== [...value.keys()][i] || v !== [...value.values()][i])) out = new Map(entries);
  } else if (value instanceof Set) {
    const items = [...value].map((v) => reduceDeep(v, ctx, memo));
    if (items.some((v, i) => v !== [...value][i])) out = new Set(items);
  } else {
    const rec = value as Record<string, unknown>;
    let copy: Record<string, unknown> | null = null;
    for (const k of Object.keys(rec)) {
      const r = reduceDeep(rec[k], ctx, memo);
      if (r !== rec[k]) {
        copy ??= { ...rec };
        copy[k] = r;
      }
    }
    if (copy) out = copy;
  }
  memo.set(value, out);
  return out;
}

function rebuildDeep(value: unknown, ctx: RebuildContext, memo: Map<object, unknown>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (memo.has(value)) return memo.get(value);
  const rec = value as Record<string, unknown>;
  if (typeof rec[MARK] === 'string') {
    const type = rec[MARK] as string;
    const rebuild = rebuilders.get(type);
    if (!rebuild) throw new TypeError(`cannot rebuild a ${type} in this process: its module is not loaded`);
    const obj = rebuild(rebuildDeep(rec.state, ctx, memo), ctx);
    memo.set(value, obj);
    return obj;
  }
  if (!isPlainContainer(value)) return value;
  memo.set(value, value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = rebuildDeep(value[i], ctx, memo);
  } else if (value instanceof Map) {
    const entries = [...value].map(([k, v]) => [rebuildDeep(k, ctx, memo), rebuildDeep(v, ctx, memo)] as const);
    value.clear();
    for (const [k, v] of entries) value.set(k, v);
  } else if (value instanceof Set) {
    const items = [...value].map((v) => rebuildDeep(v, ctx, memo));
    value.clear();
    for (const v of items) value.add(v);
  } else {
    for (const k of Object.keys(rec)) rec[k] = rebuildDeep(rec[k], ctx, memo);
  }
  return value;
}

/** Describes what could not be serialized, for the sender's error message. */
function cloneError(e: unknown, what: string): TypeError {
  const msg = (e as Error)?.message ?? String(e);
  return new TypeError(
    `cannot send ${what} to another process: ${msg}. Values cross processes with the V8 serializer ` +
      '(plain objects, arrays, Map, Set, Date, RegExp, BigInt, typed arrays, Buffers, Errors); ' +
      'functions, symbols and native handles cannot be sent',
    { cause: e },
  );
}

// ---------------------------------------------------------------------------
// Encoding. The first byte says how the rest was made:
const ENC_V8 = 0; // v8.serialize
const ENC_V8_REDUCED = 1; // v8.serialize, with library objects in reduced form
export const ENC_JSON = 2; // JSON text: a small value JSON carries exactly (see jsonExact)

/** Values up to this many nodes are checked for the JSON form. */
const JSON_MAX_NODES = 256;

/**
 * True if JSON round-trips `value` to what the V8 serializer would deliver: plain
 * objects and arrays (no holes or extra properties, none reached twice), strings,
 * booleans, null and finite numbers other than -0, at most JSON_MAX_NODES of them.
 * For such small messages, JSON.stringify/parse cost a fraction of v8.serialize's
 * fixed overhead (a few microseconds per call).
 */
function jsonExact(value: unknown): boolean {
  jsonBudget = JSON_MAX_NODES;
  jsonSeen.length = 0;
  const ok = jsonExactNode(value);
  jsonSeen.length = 0;
  return ok;
}

let jsonBudget = 0;
const jsonSeen: object[] = [];

function jsonExactNode(v: unknown): boolean {
  if (--jsonBudget < 0) return false;
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return true;
    case 'number':
      return Number.isFinite(v) && !Object.is(v, -0);
    case 'object': {
      if (v === null) return true;
      if (jsonSeen.includes(v)) return false;
      jsonSeen.push(v);
      const proto = Object.getPrototypeOf(v);
      if (proto === Array.prototype) {
        const arr = v as unknown[];
        if (arr.length > jsonBudget) return false;
        for (let i = 0; i < arr.length; i++) if (!(i in arr) || !jsonExactNode(arr[i])) return false;
        return Object.keys(arr).length === arr.length; // no named properties besides the elements
      }
      if (proto !== Object.prototype) return false;
      const rec = v as Record<string, unknown>;
      // for-in also visits inherited enumerable keys: stricter, never wrong.
      for (const k in rec) if (k === 'toJSON' || k === '__proto__' || !jsonExactNode(rec[k])) return false;
      return true;
    }
    default:
      return false;
  }
}

/** The JSON text of `value` if JSON carries it exactly (jsonExact), else null. */
export function exactJsonText(value: unknown): string | null {
  return jsonExact(value) ? JSON.stringify(value) : null;
}

/** What dumps() makes of a value whose exactJsonText() is `text`. */
export function encodeJsonText(text: string): Buffer {
  const out = Buffer.allocUnsafe(1 + Buffer.byteLength(text));
  out[0] = ENC_JSON;
  out.write(text, 1);
  return out;
}

/** Serializes a value; fds of library objects in it are appended to `fds`. */
export function dumps(value: unknown, method: ReduceContext['method'], fds: number[], what = 'a value'): Buffer {
  const text = exactJsonText(value);
  if (text !== null) return encodeJsonText(text);
  const ctx: ReduceContext = { method, addFd: (fd) => fds.push(fd) - 1 };
  let reduced: unknown;
  try {
    reduced = reduceDeep(value, ctx, new Map());
  } catch (e) {
    if (e instanceof TypeError) throw e;
    throw cloneError(e, what);
  }
  const hasReduced = reduced !== value || fds.length > 0 || containsMark(reduced);
  try {
    const body = v8.serialize(reduced);
    const out = Buffer.allocUnsafe(body.length + 1);
    out[0] = hasReduced ? ENC_V8_REDUCED : ENC_V8;
    body.copy(out, 1);
    return out;
  } catch (e) {
    throw cloneError(e, what);
  }
}

function containsMark(v: unknown): boolean {
  return v !== null && typeof v === 'object' && typeof (v as Record<string, unknown>)[MARK] === 'string';
}

export function loads(buf: Buffer, method: RebuildContext['method'], fds: readonly number[]): unknown {
  if (buf[0] === ENC_JSON) return JSON.parse(buf.toString('utf8', 1));
  const value = v8.deserialize(buf.subarray(1));
  if (buf[0] !== ENC_V8_REDUCED) return value;
  const ctx: RebuildContext = {
    method,
    fd(index) {
      if (index < 0 || index >= fds.length) throw new RangeError(`fd #${index} did not arrive with the message`);
      return fds[index];
    },
  };
  return rebuildDeep(value, ctx, new Map());
}

// ---------------------------------------------------------------------------
// Functions and classes

export type FunctionRef =
  | { kind: 'cjs'; path: string; exportName: string | null }
  | { kind: 'esm'; url: string; exportName: string; source: string }
  /** `expression` evaluates to the function: parsed in the sender, so the receiver needs no parser. */
  | { kind: 'source'; source: string; expression: string; name: string };

/** Names a by-source function may use without declaring: the globals of any Node process. */
const moduleScopeNames = new Set(['require', 'module', 'exports', '__filename', '__dirname', 'undefined', 'NaN', 'Infinity', 'globalThis']);
function isGlobalName(name: string): boolean {
  return moduleScopeNames.has(name) || name in globalThis;
}

/** Getters that only forward a re-export (tsc/Babel emit these); others may have effects. */
const reexportGetter = /^(?:function\s*(?:get\s*)?\(\)\s*\{|get\s*\w*\(\)\s*\{|\(\)\s*=>\s*\{?)\s*(?:return\s+)?[\w$]+(?:\.[\w$]+)*;?\s*\}?$/;

function exportedAs(exp: object, fn: Function): string | null {
  for (const key of Object.keys(exp)) {
    const d = Object.getOwnPropertyDescriptor(exp, key);
    if (!d) continue;
    if ('value' in d) {
      if (d.value === fn) return key;
    } else if (d.get && reexportGetter.test(Function.prototype.toString.call(d.get))) {
      try {
        if (d.get.call(exp) === fn) return key;
      } catch {
        /* not ours */
      }
    }
  }
  return null;
}

function findInRequireCache(fn: Function): FunctionRef | null {
  const cache = require.cache;
  for (const file of Object.keys(cache)) {
    const exp = cache[file]?.exports;
    if (exp === fn) return { kind: 'cjs', path: file, exportName: null };
    if (exp === null || (typeof exp !== 'object' && typeof exp !== 'function')) continue;
    const key = exportedAs(exp, fn);
    if (key !== null) return { kind: 'cjs', path: file, exportName: key };
  }
  return null;
}

const ourDir = __dirname;

/** The file URL of the first caller outside this library (where a target was defined). */
export type CallerUrl = () => string | null;

/**
 * Captures the caller now and finds its URL when first asked: V8 formats a stack only
 * when it is read (~0.3 ms here), and 'fork' never needs it.
 */
export function captureCallerUrl(): CallerUrl {
  let site: Error | null = new Error();
  let url: string | null = null;
  return () => {
    if (site) {
      url = callerUrlFromStack(site.stack ?? '');
      site = null;  // its frames may hold on to the caller's objects
    }
    return url;
  };
}

function callerUrlFromStack(stack: string): string | null {
  for (const line of stack.split('\n').slice(1)) {
    const m = /\(?((?:file:\/\/)?\/[^():]+):\d+:\d+\)?$/.exec(line.trim());
    if (!m) continue;
    const file = m[1].startsWith('file://') ? fileURLToPath(m[1]) : m[1];
    if (file.startsWith(ourDir + path.sep) || file.startsWith('node:')) continue;
    return pathToFileURL(file).href;
  }
  return null;
}

/**
 * How to find `fn` in another process: by reference when it is exported from a
 * loaded module (found by identity), else by source when it is self-contained.
 * `what` names it in errors ("the target", "the class Worker").
 */
const describedByRef = new WeakMap<Function, FunctionRef>();  // by reference or by source

export function describeFunction(fn: Function, what: string, caller: CallerUrl | null): FunctionRef {
  // Scanning every loaded module is the costly part of start(): remember what was found.
  const known = describedByRef.get(fn);
  if (known && (known.kind === 'source' || require.cache[(known as { path: string }).path])) return known;
  const byRef = findInRequireCache(fn);
  if (byRef) {
    describedByRef.set(fn, byRef);
    return byRef;
  }
  const source = Function.prototype.toString.call(fn);
  if (/\{\s*\[native code\]\s*\}\s*$/.test(source)) {
    throw new TypeError(`${what} is a native or bound function and cannot be sent to another process; ` +
      'pass a function exported from a module, or a self-contained function');
  }
  const isClass = /^class\b/.test(source);
  let free: string[] = [];
  let expression = '';
  let parsed = true;
  try {
    ({ expression, free } = analyseFunctionSource(source, isGlobalName));
  } catch {
    parsed = false;
  }
  if (parsed && free.length === 0 && !isClass) {
    const ref: FunctionRef = { kind: 'source', source, expression, name: fn.name };
    describedByRef.set(fn, ref);  // a function's source never changes: parse it once
    return ref;
  }
  const callerUrl = caller?.() ?? null;
  if (callerUrl && fn.name && callerUrl.startsWith('file:') && /\.(mjs|mts|js|ts)$/.test(callerUrl)) {
    if (!callerUrl.endsWith('.cjs') && !isCommonJsFile(callerUrl)) {
      return { kind: 'esm', url: callerUrl, exportName: fn.name, source };
    }
  }
  const fix = 'Export it from a module (it is then sent by reference, as pickle does), or make it self-contained ' +
    '(pass what it needs through args).';
  if (!parsed) throw new TypeError(`${what} could not be analysed for sending by source. ${fix}`);
  if (isClass) throw new TypeError(`${what} is a class that is not exported from a loaded module. ${fix}`);
  throw new TypeError(
    `${what} uses the variable${free.length > 1 ? 's' : ''} ${free.map((n) => `'${n}'`).join(', ')} from an enclosing ` +
      `scope, which another process cannot see. ${fix}`,
  );
}

function isCommonJsFile(url: string): boolean {
  try {
    return require.cache[fileURLToPath(url)] !== undefined;
  } catch {
    return false;
  }
}

/** Finds the function a FunctionRef describes, in this process. */
export async function resolveFunction(ref: FunctionRef, what: string): Promise<Function> {
  switch (ref.kind) {
    case 'cjs': {
      // ref.path is a require.cache key: a module loaded already (preloaded by the forkserver)
      // needs no resolution, which costs a fresh child ~0.1-0.3 ms.
      const cached = require.cache[ref.path];
      const exp = cached?.loaded ? cached.exports : require(ref.path);
      const fn = ref.exportName === null ? exp : exp[ref.exportName];
      if (typeof fn !== 'function') throw new TypeError(`${what}: ${ref.path} no longer exports ${ref.exportName ?? 'a function'}`);
      return fn;
    }
    case 'esm': {
      const ns = await import(ref.url);
      for (const candidate of [ns[ref.exportName], ns.default?.[ref.exportName], ns.default]) {
        if (typeof candidate === 'function' && Function.prototype.toString.call(candidate) === ref.source) return candidate;
      }
      throw new TypeError(
        `${what} '${ref.exportName}' is not exported from ${ref.url}, and it uses variables from its module, so it ` +
          'cannot be sent by source. Export it, or make it self-contained.',
      );
    }
    case 'source':
      return functionFromSource(ref);
  }
}

/** Evaluates a by-source function in this process, with its own require(). */
export function functionFromSource(ref: Extract<FunctionRef, { kind: 'source' }>): Function {
  const base = path.join(process.cwd(), 'noop.js');
  // eslint-disable-next-line @typescript-eslint/no-implied-eval
  const make = new Function('require', '__filename', '__dirname', `return ${ref.expression};`);
  return make(createRequire(base), base, path.dirname(base)) as Function;
}

/** Loads the module a ref points to; used to check a reference before use. */
export function refModuleExists(ref: FunctionRef): boolean {
  if (ref.kind === 'cjs') return fs.existsSync(ref.path);
  if (ref.kind === 'esm') return fs.existsSync(fileURLToPath(ref.url));
  return true;
}
