// Point-to-point channels between processes (Python's multiprocessing/connection.py):
// Pipe, Connection, wait(), Listener/Client with HMAC authentication, and fd passing
// of Connections (reduction.py's DupFd, done here with SCM_RIGHTS). On Windows,
// Listener/Client also speak named pipes ('AF_PIPE', the default family there) and
// Connections travel over Connections as handles (reduction.py's DupHandle).
//
// Framing is Python's: a 4-byte big-endian signed length, or -1 followed by an 8-byte
// unsigned length for messages above 2 GiB, then the bytes. sendBytes/recvBytes are
// byte-for-byte compatible with a Python peer; send/recv carry V8-serialized values.
//
// Reading: every read (sync or async) goes through one parser state per Connection
// (an internal buffer plus, for large messages, the message being filled), so sync
// and async reads never steal bytes from each other; messages are handed out in the
// order the reads were asked for. Async reads wait on the event loop (uv_poll on a
// dup of the fd: never the same fd number as another watcher).
import { constants as bufferConstants } from 'node:buffer';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AuthenticationError, BufferTooShort, EOFError } from './errors';
import {
  inMicrotask, native, UV_DISCONNECT, UV_READABLE, UV_WRITABLE, type FdWatcherHandle, type NativeBinding, type PipeListenerHandle,
} from './native';
import { dumps, ENC_JSON, encodeJsonText, exactJsonText, kReduce, loads, registerRebuilder, type RebuildContext, type Reduced, type ReduceContext } from './reduction';
import { callFromIoCallback, checkTimeout, closeFds, exitHookPerProcess, lazyCrypto, pollTimeout, registerAfterFork } from './util';

const MAX_MESSAGE = bufferConstants.MAX_LENGTH;
/** Internal read buffer; messages that do not fit are read into their own buffer. */
const READ_BUFFER = 64 * 1024;
/** First allocation for a large message; it grows (doubling) only as bytes really arrive. */
const FIRST_BODY_ALLOC = 1024 * 1024;
/**
 * A message this large that has not fully arrived goes into a buffer of its own (handed
 * out without a copy). After one, the next header is read alone, as Python reads its
 * 4 bytes first, so the next large body is read straight into its own buffer.
 */
const DIRECT_BODY = 32 * 1024;

/** What recv() throws for a message that does not decode; the stream stays in sync. */
function deserializationError(length: number, e: unknown): Error {
  const err = new Error(`could not deserialize a message of ${length} bytes (not a value sent by send()?): ` +
    `${(e as Error)?.message ?? e}`, { cause: e });
  err.name = 'DeserializationError';
  return err;
}

/** send() prefix of a message in JSON form: no fds, then the encoding byte. */
const JSON_PREFIX = Buffer.from([0, ENC_JSON]);
/** Longer JSON texts go through the general path (no big native scratch buffer). */
const MAX_TEXT_SEND = 64 * 1024;
/** Linux's SCM_MAX_FD. */
const MAX_FDS = 253;

type Bytes = Buffer | ArrayBufferView | ArrayBuffer;

function asBuffer(b: Bytes, what: string): Buffer {
  if (Buffer.isBuffer(b)) return b;
  if (ArrayBuffer.isView(b)) return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (b instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && (b as unknown) instanceof SharedArrayBuffer)) {
    return Buffer.from(b as ArrayBuffer);
  }
  throw new TypeError(`${what} must be a Buffer, a typed array, a DataView or an ArrayBuffer`);
}

function itemSize(b: Bytes): number {
  return ArrayBuffer.isView(b) && 'BYTES_PER_ELEMENT' in b ? (b as unknown as { BYTES_PER_ELEMENT: number }).BYTES_PER_ELEMENT : 1;
}

/** The length prefix of a message of n bytes (Python's _send_bytes). */
function header(n: number, extra = 0): Buffer {
  if (n > 0x7fffffff) {
    const h = Buffer.allocUnsafe(12 + extra);
    h.writeInt32BE(-1, 0);
    h.writeBigUInt64BE(BigInt(n), 4);
    return h;
  }
  const h = Buffer.allocUnsafe(4 + extra);
  h.writeInt32BE(n, 0);
  return h;
}

/** The stream lost its framing: the Connection cannot be read any more (Python closes it). */
function outOfSync(message: string): Error {
  const e = new Error(`${message}; the connection is out of sync and can no longer be read (close it)`);
  (e as NodeJS.ErrnoException).code = 'EBADMSG';
  return e;
}

type ReaderKind = 'obj' | 'bytes' | 'into';
interface Reader {
  kind: ReaderKind;
  maxLength: number | null;
  into: Buffer | null;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** Resources a dropped Connection gives back (shared with the finalizer). */
interface ConnResources {
  fd: number;
  watchFd: number;
}

const finalizer = new FinalizationRegistry<ConnResources>((res) => {
  closeFds([res.fd, res.watchFd].filter((fd) => fd >= 0));
});

/** Connections that own an event-loop watcher: a forked child drops those (they are the parent's). */
const watching = new Set<WeakRef<Connection>>();
registerAfterFork(() => {
  for (const ref of watching) ref.deref()?._afterFork();
  watching.clear();
}, () => watching.size > 0);

// ---------------------------------------------------------------------------
// Waiting for fds on the event loop

/**
 * Resolves when one of `fds` is ready for `events` (or at the timeout). Each fd is
 * watched through its own dup, so a fd already watched elsewhere (a Process
 * sentinel, a Connection being read) is never registered twice with the loop.
 */
function waitFdsAsync(fds: number[], timeoutMs: number | null, events = UV_READABLE | UV_DISCONNECT,
                      stillWaiting: () => boolean = () => false): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const watchers: FdWatcherHandle[] = [];
    const dups: number[] = [];
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      for (const w of watchers) w.close();
      closeFds(dups);
      resolve();
    };
    try {
      for (const fd of fds) {
        const d = native.dup(fd);
        dups.push(d);
        const w = new native.FdWatcher(d, () => {
          if (!stillWaiting()) finish();
        });
        watchers.push(w);
        w.start(events);
      }
    } catch (e) {
      done = true;
      for (const w of watchers) w.close();
      closeFds(dups);
      reject(e);
      return;
    }
    if (timeoutMs !== null) timer = setTimeout(finish, Math.max(0, Math.min(timeoutMs, 0x7fffffff)));
  });
}

// ---------------------------------------------------------------------------
// Connection

export interface ConnectionOptions {
  readable?: boolean;
  writable?: boolean;
}

/**
 * One end of a pipe or socket (Python's multiprocessing.connection.Connection).
 * Owns its fd: close() closes it.
 */
export class Connection<T = unknown> {
  private res: ConnResources;
  private readonly isSocket: boolean;
  private readonly _readable: boolean;
  private readonly _writable: boolean;
  private _closed = false;
  /** Bytes read but not yet handed out: rb[rs, re). */
  private rb: Buffer = Buffer.allocUnsafe(0);
  private rs = 0;
  private re = 0;
  /** Header length (4, or 12 for the 8-byte form) of the message at rs (headLength). */
  private headLen = 4;
  /** A large message being received into its own buffer. */
  private body: Buffer | null = null;
  private bodyLen = 0;
  private bodyGot = 0;
  /** The last message was large: read the next header on its own (see DIRECT_BODY). */
  private lastLarge = false;
  /** Fds that arrived (SCM_RIGHTS) and were not yet claimed by a message. */
  private fdq: number[] = [];
  /** Why the stream cannot be read any more (lost framing). */
  private broken: Error | null = null;
  /** Async reads waiting, in the order they were asked for. */
  private readers: Reader[] = [];
  private watcher: FdWatcherHandle | null = null;
  private watcherOn = false;
  /** The watcher's handle is ref'd (keeps the loop alive when started); stop() leaves this as it is. */
  private watcherRefd = false;
  /** close() was asked for in this pid but waits one turn of the loop (see close()). */
  private closePid: number | null = null;

  /** Wraps an fd (a socket or one end of a pipe); the Connection owns it from now on. */
  constructor(fd: number, options: ConnectionOptions = {}) {
    if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`invalid fd: ${fd}`);
    const readable = options.readable ?? true;
    const writable = options.writable ?? true;
    if (!readable && !writable) throw new RangeError('at least one of readable or writable must be true');
    this._readable = readable;
    this._writable = writable;
    this.isSocket = native.isSocket(fd);
    // Sockets are read and written with MSG_DONTWAIT; a pipe needs O_NONBLOCK for async reads.
    if (!this.isSocket) native.setNonblock(fd, true);
    this.res = { fd, watchFd: -1 };
    finalizer.register(this, this.res, this);
  }

  get closed(): boolean {
    return this._closed || (this.closePid !== null && this.closePid === native.getpid());
  }
  get readable(): boolean {
    return this._readable;
  }
  get writable(): boolean {
    return this._writable;
  }

  fileno(): number {
    this.checkClosed();
    return this.res.fd;
  }

  private checkClosed(): void {
    if (this.closed) throw new Error('the connection is closed (handle is closed)');
  }
  private checkReadable(): void {
    this.checkClosed();
    if (!this._readable) throw new Error('this connection is write-only (the writing end of a simplex Pipe)');
  }
  private checkWritable(): void {
    this.checkClosed();
    if (!this._writable) throw new Error('this connection is read-only (the reading end of a simplex Pipe)');
  }

  // ---- writing

  /** Sends a value (V8-serialized; Connections and other library objects travel by fd/name). */
  send(obj: T): void {
    if (process.platform === 'win32') sendClosingHandlesOnFailure(() => this.sendNow(obj));
    else this.sendNow(obj);
  }

  private sendNow(obj: T): void {
    this.checkWritable();
    const text = exactJsonText(obj);
    if (text !== null && text.length <= MAX_TEXT_SEND) {
      // The common small message: framed and encoded natively, one call (see reduction.ts).
      native.connSendText(this.res.fd, JSON_PREFIX, text, this.isSocket);
      return;
    }
    const fds: number[] = [];
    const body = text !== null ? encodeJsonText(text) : dumps(obj, 'connection', fds, 'this value over a Connection');
    if (fds.length > MAX_FDS) throw new RangeError(`a message can carry at most ${MAX_FDS} fds (got ${fds.length})`);
    if (fds.length > 0 && !this.isSocket) {
      throw new TypeError('Connections and other fd-backed objects can only be sent over a duplex Pipe or a socket, ' +
        'not over a simplex (pipe-based) Pipe');
    }
    const h = header(body.length + 1, 1);
    h[h.length - 1] = fds.length;
    native.connSend(this.res.fd, h, body, 0, body.length, fds.length ? fds : null, this.isSocket);
  }

  /** Sends bytes as one message; offset and size count items of a typed array (as Python). */
  sendBytes(buf: Bytes, offset = 0, size?: number): void {
    this.checkWritable();
    const item = itemSize(buf);
    const b = asBuffer(buf, 'buf');
    const n = b.length / item;
    if (!Number.isInteger(offset) || offset < 0) throw new RangeError('offset is negative (or not an integer)');
    if (n < offset) throw new RangeError('buffer length < offset');
    if (size === undefined || size === null) size = n - offset;
    else if (!Number.isInteger(size) || size < 0) throw new RangeError('size is negative (or not an integer)');
    else if (offset + size > n) throw new RangeError('buffer length < offset + size');
    const len = size * item;
    native.connSend(this.res.fd, header(len), b, offset * item, len, null, this.isSocket);
  }

  // ---- reading: the parser

  /** Reads from the fd into buf[off, off+len): count, 0 at EOF, -1 if nothing (yet). */
  private recvRaw(buf: Buffer, off: number, len: number, timeoutMs: number): number {
    const r = native.connRecv(this.res.fd, buf, off, len, this.isSocket, timeoutMs);
    if (typeof r === 'number') return r;
    for (const fd of r[1]) this.fdq.push(fd);
    return r[0];
  }

  /**
   * The length of the message at the head of rb, or -1 if its header is incomplete; its
   * header's length goes to headLen (no object per message: this runs for every read).
   */
  private headLength(maxLength: number | null): number {
    const avail = this.re - this.rs;
    if (avail < 4) return -1;
    let size = this.rb.readInt32BE(this.rs);
    this.headLen = 4;
    if (size === -1) {
      if (avail < 12) return -1;
      const big = this.rb.readBigUInt64BE(this.rs + 4);
      this.headLen = 12;
      if (big > BigInt(MAX_MESSAGE)) {
        throw this.breakStream(outOfSync(`a message announced ${big} bytes, more than this process can hold (${MAX_MESSAGE})`));
      }
      size = Number(big);
    } else if (size < 0) {
      throw this.breakStream(outOfSync(`bad message length ${size} (negative)`));
    }
    if (maxLength !== null && size > maxLength) {
      throw this.breakStream(outOfSync(`bad message length: a message of ${size} bytes exceeds maxLength ${maxLength}`));
    }
    return size;
  }

  private breakStream(e: Error): Error {
    this.broken = e;
    this.body = null;
    this.rs = this.re = 0;
    return e;
  }

  /** True if a whole message is already buffered (poll/wait answer true without the fd). */
  private hasBufferedMessage(): boolean {
    if (this.broken) return true;
    if (this.body) return this.bodyGot === this.bodyLen;
    try {
      const size = this.headLength(null);
      return size >= 0 && this.re - this.rs >= this.headLen + size;
    } catch {
      return true; // the next read reports the broken stream
    }
  }

  /**
   * The next whole message, or null if it has not fully arrived (timeoutMs 0: do
   * not wait; -1: wait for ever). The returned view may point into the internal
   * buffer: use it before the next read. Throws EOFError at a clean end of stream.
   * `into` (a recvBytesInto target): a large body that fits is read straight into it.
   */
  private nextMessage(timeoutMs: number, maxLength: number | null, into: Buffer | null = null): Buffer | null {
    if (this.broken) throw this.broken;
    for (;;) {
      if (this.body) {
        if (this.bodyGot === this.bodyLen) {
          const b = this.body.length === this.bodyLen ? this.body : this.body.subarray(0, this.bodyLen);
          this.body = null;
          return b;
        }
        if (this.bodyGot === this.body.length) {
          // Grow only as bytes really arrive: an announced size is never trusted blindly.
          const grown = Buffer.allocUnsafe(Math.min(this.bodyLen, this.body.length * 2));
          this.body.copy(grown, 0, 0, this.bodyGot);
          this.body = grown;
        }
        const n = this.recvRaw(this.body, this.bodyGot, this.body.length - this.bodyGot, timeoutMs);
        if (n < 0) return null;
        if (n === 0) {
          throw this.breakStream(outOfSync(`got end of file during a message (${this.bodyGot} of ${this.bodyLen} bytes)`));
        }
        this.bodyGot += n;
        continue;
      }
      const size = this.headLength(maxLength);
      if (size >= 0) {
        const avail = this.re - this.rs;
        const total = this.headLen + size;
        if (avail >= total) {
          const start = this.rs + this.headLen;
          this.lastLarge = size >= DIRECT_BODY;
          this.rs += total;
          if (this.rs === this.re) this.rs = this.re = 0;
          return this.rb.subarray(start, start + size);
        }
        if (size >= DIRECT_BODY) {
          // A large message: read it into a buffer of its own (or the reader's target).
          this.lastLarge = true;
          const have = avail - this.headLen;
          this.body = into !== null && size <= into.length
            ? into.subarray(0, size)
            : Buffer.allocUnsafe(Math.min(size, Math.max(FIRST_BODY_ALLOC, have)));
          this.rb.copy(this.body, 0, this.rs + this.headLen, this.re);
          this.bodyLen = size;
          this.bodyGot = have;
          this.rs = this.re = 0;
          continue;
        }
      }
      // Need more bytes in rb.
      if (this.rb.length < READ_BUFFER) {
        const nb = Buffer.allocUnsafe(READ_BUFFER);
        this.rb.copy(nb, 0, this.rs, this.re);
        this.re -= this.rs;
        this.rs = 0;
        this.rb = nb;
      } else if (this.rs > 0 && (this.re === this.rb.length || this.rs > READ_BUFFER / 2)) {
        this.rb.copy(this.rb, 0, this.rs, this.re);
        this.re -= this.rs;
        this.rs = 0;
      }
      let room = this.rb.length - this.re;
      if (this.lastLarge) {
        // Only the rest of the next header (see DIRECT_BODY).
        const avail = this.re - this.rs;
        const header = avail < 4 || this.rb.readInt32BE(this.rs) !== -1 ? 4 : 12;
        if (avail < header) room = Math.min(room, header - avail);
      }
      const n = this.recvRaw(this.rb, this.re, room, timeoutMs);
      if (n < 0) return null;
      if (n === 0) {
        if (this.re === this.rs) throw new EOFError();
        throw this.breakStream(outOfSync(`got end of file during a message (${this.re - this.rs} bytes of a header or message)`));
      }
      this.re += n;
    }
  }

  /** Deserializes a send() message; claims the fds it carries. */
  private decode(view: Buffer): T {
    if (view.length < 2) throw new Error(`could not deserialize a message of ${view.length} bytes: too short to come from send()`);
    const nfds = view[0];
    if (nfds === 0 && view[1] === ENC_JSON) {
      // The common case (see send): no fds, JSON text; errors as below.
      try {
        return JSON.parse(view.toString('utf8', 2)) as T;
      } catch (e) {
        throw deserializationError(view.length, e);
      }
    }
    if (nfds > this.fdq.length) {
      throw new Error(`could not deserialize the message: it carries ${nfds} fds but ${this.fdq.length} arrived ` +
        '(was it sent by send() of this library?)');
    }
    const fds = this.fdq.splice(0, nfds);
    try {
      return loads(view.subarray(1), 'connection', fds) as T;
    } catch (e) {
      closeFds(fds);
      throw deserializationError(view.length, e);
    }
  }

  /** Hands a message to a reader; errors go to that reader only (the stream is in sync). */
  private deliver(r: Reader, view: Buffer, owned: boolean): void {
    try {
      r.resolve(this.consume(r.kind, view, owned, r.into));
    } catch (e) {
      r.reject(e);
    }
  }

  private consume(kind: ReaderKind, view: Buffer, owned: boolean, into: Buffer | null): unknown {
    if (kind === 'obj') return this.decode(view);
    if (kind === 'bytes') return owned ? view : Buffer.from(view);
    // 'into': Python's recv_bytes_into (into is already the slice from the offset on)
    if (view.length > into!.length) throw new BufferTooShort(owned ? view : Buffer.from(view));
    if (view.buffer !== into!.buffer || view.byteOffset !== into!.byteOffset) view.copy(into!, 0);
    return view.length;
  }

  private isOwned(view: Buffer): boolean {
    return view.buffer !== this.rb.buffer;
  }

  /** Reads messages for pending async readers until one is missing. */
  private drain(): void {
    while (this.readers.length > 0 && !this._closed) {
      let view: Buffer | null;
      try {
        view = this.nextMessage(0, this.readers[0].maxLength, this.readers[0].into);
      } catch (e) {
        this.failReaders(e);
        break;
      }
      if (!view) break;
      this.deliver(this.readers.shift()!, view, this.isOwned(view));
    }
    this.updateWatcher();
  }

  /** EOF and lost framing end every pending read (each would meet them in turn). */
  private failReaders(e: unknown): void {
    const rs = this.readers.splice(0);
    for (const r of rs) r.reject(e);
  }

  /**
   * Watches the fd while async reads wait. Once none waits, the watcher stays started but
   * unref'd: a ping-pong of recv() calls then costs no epoll_ctl per message (~2 us). Data
   * that arrives with no read waiting stops it (see onReadable).
   */
  private updateWatcher(): void {
    const want = this.readers.length > 0 && !this._closed;
    if (want) {
      if (!this.watcher) {
        this.res.watchFd = native.dup(this.res.fd);
        this.watcher = new native.FdWatcher(this.res.watchFd, () => this.onReadable());
        this.watcherRefd = true;  // as every new libuv handle
        watching.add(new WeakRef(this));
      }
      if (!this.watcherOn) {
        this.watcher.start(UV_READABLE | UV_DISCONNECT);
        this.watcherOn = true;
      }
      if (!this.watcherRefd) {
        this.watcher.ref();
        this.watcherRefd = true;
      }
    } else if (this.watcherOn) {
      if (this._closed) {
        this.stopWatcher();
      } else if (this.watcherRefd) {
        this.watcher!.unref();
        this.watcherRefd = false;
      }
    }
  }

  private stopWatcher(): void {
    this.watcher?.stop();
    this.watcherOn = false;
  }

  /** The watcher fired: serve waiting reads; with none waiting, stop (the fd stays readable). */
  private onReadable(): void {
    if (this.readers.length === 0) this.stopWatcher();
    else this.drain();
  }

  /** Closes the loop watcher (not its fd). */
  private dropWatcher(): void {
    if (this.watcher) this.watcher.close();
    this.watcher = null;
    this.watcherOn = false;
    this.watcherRefd = false;
  }

  /** In a forked child: the parent's pending reads and loop watcher are not ours. */
  _afterFork(): void {
    this.dropWatcher();
    if (this.res.watchFd >= 0) closeFds([this.res.watchFd]);
    this.res.watchFd = -1;
    this.readers = [];
  }

  private readAsync<R>(kind: ReaderKind, maxLength: number | null, into: Buffer | null): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.readers.push({ kind, maxLength, into, resolve: resolve as (v: unknown) => void, reject });
      if (this.readers.length === 1) this.drain();
      else this.updateWatcher();
    });
  }

  /** A blocking read: first satisfies earlier async reads (in order), then this one. */
  private readSync(kind: ReaderKind, maxLength: number | null, into: Buffer | null): unknown {
    while (this.readers.length > 0) {
      let view: Buffer;
      try {
        view = this.nextMessage(-1, this.readers[0].maxLength, this.readers[0].into)!;
      } catch (e) {
        this.failReaders(e);
        this.updateWatcher();
        throw e;
      }
      this.deliver(this.readers.shift()!, view, this.isOwned(view));
    }
    this.updateWatcher();
    const view = this.nextMessage(-1, maxLength, into)!;
    return this.consume(kind, view, this.isOwned(view), into);
  }

  /** Receives a value sent with send(). Rejects with an EOFError-named error once the peer closed. */
  recv(): Promise<T> {
    try {
      this.checkReadable();
    } catch (e) {
      return Promise.reject(e);
    }
    return this.readAsync<T>('obj', null, null);
  }

  recvSync(): T {
    this.checkReadable();
    return this.readSync('obj', null, null) as T;
  }

  private static checkMaxLength(maxLength: number | null | undefined): number | null {
    if (maxLength === undefined || maxLength === null) return null;
    if (typeof maxLength !== 'number' || Number.isNaN(maxLength)) throw new TypeError('maxLength must be a number');
    if (maxLength < 0) throw new RangeError('negative maxLength');
    return maxLength;
  }

  /** Receives one message as bytes. A longer message than maxLength makes the Connection unusable (as Python). */
  recvBytes(maxLength?: number | null): Promise<Buffer> {
    let ml: number | null;
    try {
      this.checkReadable();
      ml = Connection.checkMaxLength(maxLength);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.readAsync<Buffer>('bytes', ml, null);
  }

  recvBytesSync(maxLength?: number | null): Buffer {
    this.checkReadable();
    return this.readSync('bytes', Connection.checkMaxLength(maxLength), null) as Buffer;
  }

  private static intoTarget(buf: Bytes, offset: number): Buffer {
    const b = asBuffer(buf, 'buf');
    if (!Number.isInteger(offset) || offset < 0) throw new RangeError('negative offset');
    if (offset > b.length) throw new RangeError('offset too large');
    return b.subarray(offset);
  }

  /**
   * Receives one message into buf at byte offset; resolves to its length. A message
   * that does not fit rejects with BufferTooShort carrying it in `data` (the stream stays usable).
   * A large message is read straight into buf (no copy), so if the stream breaks during it
   * (the peer ends mid-message), buf may hold the part that arrived.
   */
  recvBytesInto(buf: Bytes, offset = 0): Promise<number> {
    let target: Buffer;
    try {
      this.checkReadable();
      target = Connection.intoTarget(buf, offset);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.readAsync<number>('into', null, target);
  }

  recvBytesIntoSync(buf: Bytes, offset = 0): number {
    this.checkReadable();
    return this.readSync('into', null, Connection.intoTarget(buf, offset)) as number;
  }

  // ---- polling (never consumes a message)

  /** Whether there is something to read: waits up to `timeout` ms (default 0: do not wait; null: for ever). */
  pollSync(timeout: number | null = 0): boolean {
    this.checkReadable();
    const t = checkTimeout(timeout);
    if (this.hasBufferedMessage()) return true;
    return native.pollFds([this.res.fd], pollTimeout(t)).length > 0;
  }

  async poll(timeout: number | null = 0): Promise<boolean> {
    this.checkReadable();
    const t = checkTimeout(timeout);
    if (this.hasBufferedMessage() || native.pollFds([this.res.fd], 0).length > 0) return true;
    if (t !== null && !(t > 0)) return false;
    await waitFdsAsync([this.res.fd], t);
    if (this.closed) return false;
    return this.hasBufferedMessage() || native.pollFds([this.res.fd], 0).length > 0;
  }

  /** For wait(): a whole message is buffered. */
  _ready(): boolean {
    return this.hasBufferedMessage();
  }

  // ---- closing

  close(): void {
    if (this._closed) return;
    if (inMicrotask() && forkPending()) {
      // Inside a promise continuation, a 'fork' Process started just before forks at the next turn of
      // the loop (popen_fork.ts), and Python's `p.start(); conn.close()` must still hand the child an
      // open fd: the fd is closed right after that fork (the calls run in order; a child forked by an
      // earlier one never runs this one). For this process it is closed from now on.
      if (this.closePid === null) {
        this.closePid = native.getpid();
        callFromIoCallback(() => {
          if (this.closePid === native.getpid()) this.closeNow();
        });
      }
      return;
    }
    this.closeNow();
  }

  private closeNow(): void {
    if (this._closed) return;
    this._closed = true;
    finalizer.unregister(this);
    this.dropWatcher();
    const fds = [this.res.fd, this.res.watchFd, ...this.fdq.splice(0)].filter((fd) => fd >= 0);
    this.res.watchFd = -1;
    closeFds(fds);
    this.body = null;
    this.rb = Buffer.allocUnsafe(0);
    this.rs = this.re = 0;
    const err = new Error('the connection was closed while a read was pending');
    this.failReaders(err);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  toString(): string {
    return `<Connection fd=${this._closed ? 'closed' : this.res.fd}${this._readable ? ' r' : ''}${this._writable ? 'w' : ''}>`;
  }

  // ---- travelling to other processes: the fd goes along (SCM_RIGHTS or inheritance)

  [kReduce](ctx: ReduceContext): Reduced {
    this.checkClosed();
    if (process.platform === 'win32' && ctx.method === 'connection') return reducePipeHandle(this.res.fd, this._readable, this._writable);
    return { type: 'mp.Connection', state: { fd: ctx.addFd(this.res.fd), readable: this._readable, writable: this._writable } };
  }
}

registerRebuilder('mp.Connection', (s: { fd: number; readable: boolean; writable: boolean }, ctx: RebuildContext) =>
  new Connection(ctx.fd(s.fd), { readable: s.readable, writable: s.writable }));

// Windows: a Connection sent over a Connection (CPython's reduce_pipe_connection with
// reduction.DupHandle). There is no SCM_RIGHTS, and the sender does not know which
// process will read the message; so, as CPython's DupHandle(pid=None), the sender
// duplicates the handle within itself and sends its value and its own pid, and the
// receiver takes the handle out of the sender (DuplicateHandle with
// DUPLICATE_CLOSE_SOURCE). As in CPython, the sender must still be running when the
// message is read, and a message sent but never read leaves the duplicate open in the
// sender until it exits; a message that is not sent at all closes it again (send()).
// Process args under 'spawn' do not come here (ctx.method 'spawn'): their fds reach the
// child through child_process.spawn's stdio (libuv duplicates them, inheritable, for
// that child only), as on POSIX.

interface PipeHandleState {
  handle: number;
  pid: number;
  readable: boolean;
  writable: boolean;
}

/** Handles duplicated for the message send() is building (Windows), closed again if it is not sent. */
let sendingHandles: number[] | null = null;

function reducePipeHandle(fd: number, readable: boolean, writable: boolean): Reduced {
  const pid = native.getpid();
  const handle = winPipes().duplicateHandleTo(fd, pid);
  sendingHandles?.push(handle);
  const state: PipeHandleState = { handle, pid, readable, writable };
  return { type: 'mp.PipeConnection', state };
}

registerRebuilder('mp.PipeConnection', (s: PipeHandleState) => {
  const fd = winPipes().handleToFd(s.handle, s.pid);
  try {
    return new Connection(fd, { readable: s.readable, writable: s.writable });
  } catch (e) {
    closeFds([fd]);
    throw e;
  }
});

/** Windows: runs send() and closes the handles it duplicated if the message did not leave. */
function sendClosingHandlesOnFailure(send: () => void): void {
  const outer = sendingHandles;
  const mine: number[] = [];
  sendingHandles = mine;
  try {
    send();
  } catch (e) {
    const pid = native.getpid();
    for (const h of mine) {
      try {
        winPipes().closeRemoteHandle(pid, h);
      } catch {
        /* already gone */
      }
    }
    throw e;
  } finally {
    sendingHandles = outer;
  }
}

/** A 'fork' Process started inside a promise continuation that has not forked yet (popen_fork.ts). */
function forkPending(): boolean {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { activeChildren } = require('./process') as typeof import('./process');
  return activeChildren().some((p) => p.pid === null);
}

// ---------------------------------------------------------------------------
// Pipe

/** Two connected Connections: duplex (a socketpair) or [reader, writer] (a pipe). */
export function Pipe<T = unknown>(options: { duplex?: boolean } | boolean = {}): [Connection<T>, Connection<T>] {
  const duplex = typeof options === 'boolean' ? options : (options.duplex ?? true);
  if (duplex) {
    const [a, b] = native.socketpair();
    return [new Connection<T>(a), new Connection<T>(b)];
  }
  const [r, w] = native.pipe();
  return [new Connection<T>(r, { readable: true, writable: false }), new Connection<T>(w, { readable: false, writable: true })];
}

// ---------------------------------------------------------------------------
// wait()

/** Something wait() can watch: a Connection, a Process (its sentinel), an fd, or an object with fileno(). */
export type Waitable = Connection<any> | { sentinel: number; exitCode?: number | null } | { fileno(): number } | number;

function fdOf(o: Waitable): number {
  if (typeof o === 'number') return o;
  if (o instanceof Connection) return o.fileno();
  if (o && typeof (o as { fileno?: unknown }).fileno === 'function') return (o as { fileno(): number }).fileno();
  if (o && typeof (o as { sentinel?: unknown }).sentinel === 'number') return (o as { sentinel: number }).sentinel;
  throw new TypeError(`wait() takes Connections, Processes (sentinels), fds or objects with fileno(); got ${String(o)}`);
}

function readyNow<W extends Waitable>(objects: W[], fds: number[]): W[] {
  const pending: number[] = [];
  const early = new Set<number>();
  objects.forEach((o, i) => {
    if (o instanceof Connection && o._ready()) early.add(i);
    else pending.push(fds[i]);
  });
  const polled = pending.length ? new Set(native.pollFds(pending, 0)) : new Set<number>();
  return objects.filter((o, i) => early.has(i) || polled.has(fds[i]));
}

/**
 * Resolves to the objects that are ready (a message or EOF to read, a process
 * ended, an fd readable) once at least one is, or [] at the timeout (ms; undefined
 * or null: for ever; 0: do not wait).
 */
export async function wait<W extends Waitable>(objects: Iterable<W>, timeout?: number | null): Promise<W[]> {
  const list = [...objects];
  const t = checkTimeout(timeout);
  const fds = list.map(fdOf);
  const now = readyNow(list, fds);
  if (now.length > 0 || (t !== null && !(t > 0)) || list.length === 0) {
    if (list.length === 0 && t === null) throw new RangeError('wait() on no objects with no timeout would wait for ever');
    return now;
  }
  const deadline = t === null ? null : Date.now() + t;
  for (;;) {
    const left = deadline === null ? null : Math.max(0, deadline - Date.now());
    await waitFdsAsync(fds, left, UV_READABLE | UV_DISCONNECT, () => readyNow(list, fds).length === 0);
    const r = readyNow(list, fds);
    if (r.length > 0 || (deadline !== null && Date.now() >= deadline)) return r;
  }
}

/** The blocking form of wait(). */
export function waitSync<W extends Waitable>(objects: Iterable<W>, timeout?: number | null): W[] {
  const list = [...objects];
  const t = checkTimeout(timeout);
  const fds = list.map(fdOf);
  const deadline = t === null ? null : Date.now() + t;
  for (;;) {
    const r = readyNow(list, fds);
    if (r.length > 0) return r;
    const left = deadline === null ? null : deadline - Date.now();
    if (left !== null && left <= 0) return [];
    if (native.pollFds(fds, pollTimeout(left)).length === 0 && left !== null) return readyNow(list, fds);
  }
}

// ---------------------------------------------------------------------------
// Addresses

export type Address = string | [string, number] | readonly [string, number];
export type Family = 'AF_UNIX' | 'AF_INET' | 'AF_INET6' | 'AF_PIPE';

const FAMILIES: readonly Family[] = ['AF_UNIX', 'AF_INET', 'AF_INET6', 'AF_PIPE'];

/** What Listener() uses without an address or family (Python's default_family). */
function defaultFamily(): Family {
  return process.platform === 'win32' ? 'AF_PIPE' : 'AF_UNIX';
}

/** Python's _validate_family: a known family that exists on this platform. */
function validateFamily(family: unknown): asserts family is Family {
  if (!FAMILIES.includes(family as Family)) {
    throw new RangeError(`unsupported family ${String(family)}: use ${FAMILIES.map((f) => `'${f}'`).join(', ')}`);
  }
  if (family === 'AF_PIPE' && process.platform !== 'win32') {
    throw new Error('named pipes (AF_PIPE, addresses starting with \\\\) exist only on Windows; ' +
      "use a Unix socket path ('AF_UNIX') or [host, port] ('AF_INET') here");
  }
}

/**
 * The family of an address (Python's address_type): a string starting with two
 * backslashes is a Windows named pipe ('AF_PIPE'), another string a Unix socket path,
 * [host, port] TCP ('AF_INET6' when host contains ':').
 */
export function addressType(address: Address): Family {
  if (typeof address === 'string') return address.startsWith('\\\\') ? 'AF_PIPE' : 'AF_UNIX';
  if (Array.isArray(address) && address.length === 2 && typeof address[0] === 'string' && typeof address[1] === 'number') {
    return address[0].includes(':') ? 'AF_INET6' : 'AF_INET';
  }
  throw new TypeError('address must be a Unix socket path (string; \'\\0name\' for a Linux abstract name), a Windows ' +
    `named pipe ('\\\\.\\pipe\\name') or [host, port]; got ${String(address)}`);
}

let pipeCounter = 0;
/** tempfile's random names: 8 characters of this alphabet. */
const NAME_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789_';

/** A fresh address of `family` for a Listener (Python's arbitrary_address). */
export function arbitraryAddress(family: Family): Address {
  if (family === 'AF_UNIX') return path.join(os.tmpdir(), `mp-listener-${process.pid}-${lazyCrypto().randomBytes(6).toString('hex')}`);
  if (family === 'AF_PIPE') {
    // As CPython: \\.\pipe\pyc-<pid>-<counter>-<8 random characters>.
    let rand = '';
    for (let i = 0; i < 8; i++) rand += NAME_CHARS[lazyCrypto().randomInt(NAME_CHARS.length)];
    return `\\\\.\\pipe\\pyc-${process.pid}-${pipeCounter++}-${rand}`;
  }
  return [family === 'AF_INET6' ? '::1' : '127.0.0.1', 0];
}

function numericHost(host: string): string {
  if (host === 'localhost') return '127.0.0.1';
  if (host === '') return '0.0.0.0';
  return host;
}

const unlinkAtExit = new Set<string>();
const ensureUnlinkAtExit = exitHookPerProcess(() => {
  for (const f of unlinkAtExit) fs.rmSync(f, { force: true });
});
function unlinkLater(p: string): void {
  unlinkAtExit.add(p);
  ensureUnlinkAtExit();
}
registerAfterFork(() => unlinkAtExit.clear(), () => unlinkAtExit.size > 0); // the parent's listeners are not a forked child's to unlink

// ---------------------------------------------------------------------------
// Authentication (Python 3.12+'s HMAC challenge/response, wire-compatible)

const MESSAGE_LENGTH = 40;
const CHALLENGE = Buffer.from('#CHALLENGE#');
const WELCOME = Buffer.from('#WELCOME#');
const FAILURE = Buffer.from('#FAILURE#');
const ALLOWED_DIGESTS = new Map([['md5', 'md5'], ['sha256', 'sha256'], ['sha384', 'sha384'], ['sha3_256', 'sha3-256'], ['sha3_384', 'sha3-384']]);
const MAX_DIGEST_LEN = 8;
const MD5ONLY_MESSAGE_LENGTH = 20;
const MD5_DIGEST_LEN = 16;

function digestNameAndPayload(message: Buffer): [string, Buffer] {
  if (message.length === MD5ONLY_MESSAGE_LENGTH || message.length === MD5_DIGEST_LEN) return ['', message];
  if (message[0] === 0x7b /* { */) {
    const curly = message.indexOf(0x7d /* } */, 1);
    if (curly > 0 && curly < MAX_DIGEST_LEN + 2) {
      const name = message.subarray(1, curly).toString('latin1');
      if (ALLOWED_DIGESTS.has(name)) return [name, message.subarray(curly + 1)];
    }
  }
  throw new AuthenticationError('unsupported message length, missing digest prefix, or unsupported digest: ' +
    `message=${JSON.stringify(message.toString('latin1'))}`);
}

function hmac(authkey: Buffer, message: Buffer, pyName: string): Buffer {
  return lazyCrypto().createHmac(ALLOWED_DIGESTS.get(pyName)!, authkey).update(message).digest();
}

function createResponse(authkey: Buffer, message: Buffer): Buffer {
  let [name] = digestNameAndPayload(message);
  if (!name) {
    try {
      return hmac(authkey, message, 'md5');
    } catch {
      name = 'sha256';
    }
  }
  return Buffer.concat([Buffer.from(`{${name}}`), hmac(authkey, message, name)]);
}

function verifyChallenge(authkey: Buffer, message: Buffer, response: Buffer): void {
  const [name, mac] = digestNameAndPayload(response);
  const digest = name || 'md5';
  let expected: Buffer;
  try {
    expected = hmac(authkey, message, digest);
  } catch {
    throw new AuthenticationError(`response_digest='${digest}' unsupported`);
  }
  if (expected.length !== mac.length) {
    throw new AuthenticationError(`expected '${digest}' of length ${expected.length} got ${mac.length}`);
  }
  if (!lazyCrypto().timingSafeEqual(expected, mac)) throw new AuthenticationError('digest received was wrong');
}

function checkAuthkey(authkey: unknown): Buffer | null {
  if (authkey === undefined || authkey === null) return null;
  if (Buffer.isBuffer(authkey)) return authkey;
  if (authkey instanceof Uint8Array) return Buffer.from(authkey);
  throw new TypeError('authkey must be a Buffer (or Uint8Array)');
}

async function recvAuth(conn: Connection, what: string): Promise<Buffer> {
  try {
    return await conn.recvBytes(256);
  } catch (e) {
    if ((e as Error).name === 'EOFError') throw e;
    throw new AuthenticationError(`${what}: ${(e as Error).message}`, { cause: e });
  }
}

/** The serving side's half (Python's deliver_challenge). */
export async function deliverChallenge(conn: Connection, authkey: Buffer, digestName = 'sha256'): Promise<void> {
  const message = Buffer.concat([Buffer.from(`{${digestName}}`), lazyCrypto().randomBytes(MESSAGE_LENGTH)]);
  conn.sendBytes(Buffer.concat([CHALLENGE, message]));
  const response = await recvAuth(conn, 'no valid response to the challenge');
  try {
    verifyChallenge(authkey, message, response);
  } catch (e) {
    try {
      conn.sendBytes(FAILURE);
    } catch {
      /* the peer is gone */
    }
    throw e;
  }
  conn.sendBytes(WELCOME);
}

/** The connecting side's half (Python's answer_challenge). */
export async function answerChallenge(conn: Connection, authkey: Buffer): Promise<void> {
  let message = await recvAuth(conn, 'no valid challenge');
  if (!message.subarray(0, CHALLENGE.length).equals(CHALLENGE)) {
    throw new AuthenticationError(`Protocol error, expected challenge: message=${JSON.stringify(message.toString('latin1'))}`);
  }
  message = message.subarray(CHALLENGE.length);
  if (message.length < MD5ONLY_MESSAGE_LENGTH) throw new AuthenticationError(`challenge too short: ${message.length} bytes`);
  conn.sendBytes(createResponse(authkey, message));
  const response = await recvAuth(conn, 'no answer to our response');
  if (!response.equals(WELCOME)) throw new AuthenticationError('digest sent was rejected');
}

// ---------------------------------------------------------------------------
// Listener / Client

/** The named pipe functions of the Windows addon (native/win/named_pipe_win.cc). */
type WinPipes = Required<Pick<NativeBinding, 'PipeListener' | 'pipeConnect' | 'duplicateHandleTo' | 'handleToFd' | 'closeRemoteHandle'>>;

function winPipes(): WinPipes {
  validateFamily('AF_PIPE'); // the clear error off Windows
  if (typeof native.PipeListener !== 'function') {
    throw new Error('this build of the native addon has no named pipe support (AF_PIPE): rebuild it (npx node-gyp rebuild)');
  }
  return native as WinPipes;
}

/** How long Client waits for a free instance of a busy pipe (CPython's CONNECTION_TIMEOUT). */
const PIPE_CONNECT_TIMEOUT_MS = 20_000;

/**
 * Python's PipeClient: connects to a named pipe. When every instance is busy it tries
 * again (1, 2, 4 ... 50 ms apart: never blocking the event loop) for up to 20 s; a
 * name nobody listens on fails at once (code 'ENOENT').
 */
async function pipeClient(address: string): Promise<number> {
  const pipes = winPipes();
  const deadline = Date.now() + PIPE_CONNECT_TIMEOUT_MS;
  for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
    const fd = pipes.pipeConnect(address, 0);
    if (fd !== null) return fd;
    if (Date.now() >= deadline) {
      const e = new Error(`connect ETIMEDOUT ${address}: every instance of the named pipe stayed busy for ` +
        `${PIPE_CONNECT_TIMEOUT_MS / 1000} s (ERROR_PIPE_BUSY)`);
      Object.assign(e, { code: 'ETIMEDOUT', syscall: 'connect', address });
      throw e;
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

export interface ListenerOptions {
  address?: Address;
  family?: Family;
  backlog?: number;
  authkey?: Buffer | Uint8Array | null;
}

/** A bound, listening socket or (Windows) named pipe (Python's Listener). Bound when constructed. */
export class Listener {
  private fd: number;
  /** AF_PIPE: the named pipe (fd is then -1). */
  private pipe: PipeListenerHandle | null = null;
  private readonly _address: Address;
  readonly family: Family;
  private readonly authkey: Buffer | null;
  private unlinkPath: string | null = null;
  private _lastAccepted: Address | null = null;

  constructor(addressOrOptions: Address | ListenerOptions = {}, options: ListenerOptions = {}) {
    const opts: ListenerOptions = typeof addressOrOptions === 'string' || Array.isArray(addressOrOptions)
      ? { ...options, address: addressOrOptions as Address }
      : (addressOrOptions as ListenerOptions);
    const family = opts.family ?? (opts.address !== undefined ? addressType(opts.address) : defaultFamily());
    validateFamily(family);
    this.family = family;
    this.authkey = checkAuthkey(opts.authkey);
    const address = opts.address ?? arbitraryAddress(family);
    const backlog = opts.backlog ?? 128;
    if (family === 'AF_PIPE') {
      if (typeof address !== 'string') throw new TypeError('an AF_PIPE address is a string (\\\\.\\pipe\\name)');
      this.fd = -1;
      this.pipe = new (winPipes().PipeListener)(address, backlog);
      this._address = address;
    } else if (family === 'AF_UNIX') {
      if (typeof address !== 'string') throw new TypeError('an AF_UNIX address is a path string');
      this.fd = native.unixListen(address, backlog);
      this._address = address;
      if (!address.startsWith('\0')) {
        this.unlinkPath = address;
        unlinkLater(address);
      }
    } else {
      if (typeof address === 'string') throw new TypeError(`an ${family} address is [host, port]`);
      const [fd, bound] = native.tcpListen(numericHost(address[0]), address[1], backlog);
      this.fd = fd;
      this._address = [bound[0], bound[1]];
    }
  }

  /** The address it listens on; for [host, 0] the port the system chose. */
  get address(): Address {
    return this._address;
  }

  get lastAccepted(): Address | null {
    return this._lastAccepted;
  }

  get closed(): boolean {
    return this.fd < 0 && this.pipe === null;
  }

  fileno(): number {
    if (this.pipe) throw new Error('a named pipe (AF_PIPE) Listener has no fd: each client gets a pipe instance of its own');
    if (this.fd < 0) throw new Error('listener is closed');
    return this.fd;
  }

  private takePending(): Connection | null {
    if (this.fd < 0) throw new Error('listener is closed');
    const c = native.accept(this.fd);
    if (c === null) return null;
    if (this.family !== 'AF_UNIX') native.setNodelay(c);
    this._lastAccepted = this.family === 'AF_UNIX' ? '' : null;
    return new Connection(c);
  }

  /** Waits for a client; authenticates it when the Listener has an authkey (AuthenticationError if it fails). */
  async accept(): Promise<Connection> {
    let c: Connection | null;
    if (this.pipe) {
      c = await this.acceptPipe(this.pipe);
    } else {
      while ((c = this.takePending()) === null) {
        await waitFdsAsync([this.fd], null);
      }
    }
    if (this.authkey) {
      try {
        await deliverChallenge(c, this.authkey);
        await answerChallenge(c, this.authkey);
      } catch (e) {
        c.close();
        throw e;
      }
    }
    return c;
  }

  /** AF_PIPE: a native thread waits for the client (the event loop stays free). */
  private async acceptPipe(pipe: PipeListenerHandle): Promise<Connection> {
    const fd = await pipe.accept();
    this._lastAccepted = null; // as CPython's PipeListener: no peer address
    try {
      return new Connection(fd);
    } catch (e) {
      closeFds([fd]);
      throw e;
    }
  }

  close(): void {
    if (this.pipe) {
      this.pipe.close(); // pending accepts reject (code 'ECANCELED')
      this.pipe = null;
      return;
    }
    if (this.fd < 0) return;
    closeFds([this.fd]);
    this.fd = -1;
    if (this.unlinkPath) {
      fs.rmSync(this.unlinkPath, { force: true });
      unlinkAtExit.delete(this.unlinkPath);
      this.unlinkPath = null;
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export interface ClientOptions {
  family?: Family;
  authkey?: Buffer | Uint8Array | null;
}

/** Connects to a Listener (ours or Python's) and authenticates when given an authkey. */
export async function Client<T = unknown>(address: Address, options: ClientOptions = {}): Promise<Connection<T>> {
  const family = options.family ?? addressType(address);
  validateFamily(family);
  const authkey = checkAuthkey(options.authkey);
  let fd: number;
  if (family === 'AF_PIPE') {
    if (typeof address !== 'string') throw new TypeError('an AF_PIPE address is a string (\\\\.\\pipe\\name)');
    fd = await pipeClient(address);
  } else if (family === 'AF_UNIX') {
    if (typeof address !== 'string') throw new TypeError('an AF_UNIX address is a path string');
    fd = native.unixConnect(address);
  } else {
    if (typeof address === 'string') throw new TypeError(`an ${family} address is [host, port]`);
    let host = numericHost(address[0]);
    if (!/^[\d.]+$/.test(host) && !host.includes(':')) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const dns = require('node:dns') as typeof import('node:dns');  // loaded only for host names
      host = (await dns.promises.lookup(host, { family: family === 'AF_INET6' ? 6 : 4 })).address;
    }
    const [s, inProgress] = native.tcpConnect(host, address[1]);
    fd = s;
    if (inProgress) {
      await waitFdsAsync([fd], null, UV_WRITABLE | UV_DISCONNECT);
      try {
        native.socketError(fd);
      } catch (e) {
        closeFds([fd]);
        throw e;
      }
    }
  }
  const c = new Connection<T>(fd);
  if (authkey) {
    try {
      await answerChallenge(c as Connection, authkey);
      await deliverChallenge(c as Connection, authkey);
    } catch (e) {
      c.close();
      throw e;
    }
  }
  return c;
}
