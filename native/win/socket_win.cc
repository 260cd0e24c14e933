// Raw fd I/O on Windows, with the JS names of native/socket.cc.
//
//  - socketpair(): a connected pair of duplex byte-mode named pipe ends (the
//    Windows equivalent CPython's multiprocessing.Pipe(duplex=True) uses).
//  - read/write/readExact/sendMsg (without fds): ReadFile/WriteFile on the fd's
//    HANDLE. Waiting for data on a pipe polls PeekNamedPipe (anonymous and
//    synchronous pipes cannot be waited on).
//  - setNonblock(): PIPE_NOWAIT on pipes (as CPython's os.set_blocking); no-op on files.
//  - isSocket/connRecv/connSend (Connection I/O) work on pipes: every fd is a pipe here.
//  - Unix sockets, TCP sockets as fds and fd passing (SCM_RIGHTS) do not exist:
//    unixListen, unixConnect, accept, tcpListen, tcpConnect, socketError, recvMsg, and
//    sendMsg/connSend with fds throw an error with code 'ERR_NOT_SUPPORTED_ON_WINDOWS'.
#include "win_util.h"

#include <algorithm>
#include <atomic>
#include <cwchar>
#include <random>
#include <vector>

namespace mp {
namespace {

constexpr DWORD kPipeBuffer = 65536;
constexpr DWORD kMaxIo = 1u << 30;  // one ReadFile/WriteFile moves at most this much

bool IsPipe(HANDLE h) { return GetFileType(h) == FILE_TYPE_PIPE; }

bool PipeIsNowait(HANDLE h) {
  DWORD state = 0;
  return GetNamedPipeHandleState(h, &state, nullptr, nullptr, nullptr, nullptr, 0) && (state & PIPE_NOWAIT) != 0;
}

// Waits until a read on h would not block (data, or the other end closed); timeout_ms
// < 0 waits for ever. Returns false on timeout. Files are always ready.
bool WaitReadable(HANDLE h, int timeout_ms) {
  if (!IsPipe(h)) return true;
  ULONGLONG start = GetTickCount64();
  DWORD delay = 0;
  for (;;) {
    DWORD avail = 0;
    // Fails once the other end is closed (or for a socket): ReadFile then tells which.
    if (!PeekNamedPipe(h, nullptr, 0, nullptr, &avail, nullptr) || avail > 0) return true;
    if (timeout_ms == 0) return false;
    delay = std::min<DWORD>(delay + 1, 20);  // as CPython's polls: 1, 2, ... 20 ms
    if (timeout_ms > 0) {
      ULONGLONG elapsed = GetTickCount64() - start;
      if (elapsed >= static_cast<ULONGLONG>(timeout_ms)) return false;
      delay = static_cast<DWORD>(std::min<ULONGLONG>(delay, static_cast<ULONGLONG>(timeout_ms) - elapsed));
    }
    Sleep(delay);
  }
}

// One ReadFile: the number of bytes read, 0 at EOF (the other end closed), -1 when
// nothing can be read now (a PIPE_NOWAIT pipe is empty).
int64_t ReadOnce(Napi::Env env, HANDLE h, uint8_t* buf, size_t len) {
  DWORD n = 0;
  DWORD want = static_cast<DWORD>(std::min<size_t>(len, kMaxIo));
  if (!ReadFile(h, buf, want, &n, nullptr)) {
    DWORD e = GetLastError();
    if (e == ERROR_MORE_DATA) return n;  // part of a message (message-mode pipe)
    if (e == ERROR_BROKEN_PIPE || e == ERROR_PIPE_NOT_CONNECTED || e == ERROR_HANDLE_EOF) return 0;
    // ERROR_NO_DATA: empty in PIPE_NOWAIT mode; otherwise the pipe is being closed.
    if (e == ERROR_NO_DATA) return PipeIsNowait(h) ? -1 : 0;
    ThrowWin32(env, e, "ReadFile");
  }
  if (n == 0 && IsPipe(h)) return -1;  // a zero-length write on a pipe, not EOF
  return n;
}

// One WriteFile: bytes written (0 when a PIPE_NOWAIT pipe is full).
size_t WriteOnce(Napi::Env env, HANDLE h, const uint8_t* data, size_t len) {
  if (len == 0) return 0;  // a zero-length write would reach a pipe reader as a message
  DWORD n = 0;
  if (!WriteFile(h, data, static_cast<DWORD>(std::min<size_t>(len, kMaxIo)), &n, nullptr)) {
    DWORD e = GetLastError();
    // The reader is gone: EPIPE, as a write to a closed pipe or socket on POSIX.
    if (e == ERROR_BROKEN_PIPE || e == ERROR_NO_DATA || e == ERROR_PIPE_NOT_CONNECTED)
      throw Win32Error(env, e, "WriteFile", UV_EPIPE);
    ThrowWin32(env, e, "WriteFile");
  }
  return n;
}

// Writes all of data, waiting while a PIPE_NOWAIT pipe is full (no way to wait for
// room in a pipe but to retry).
void WriteAll(Napi::Env env, HANDLE h, const uint8_t* data, size_t len) {
  size_t sent = 0;
  DWORD delay = 0;
  while (sent < len) {
    size_t n = WriteOnce(env, h, data + sent, len - sent);
    if (n == 0) {
      delay = std::min<DWORD>(delay + 1, 20);
      Sleep(delay);
      continue;
    }
    delay = 0;
    sent += n;
  }
}

std::wstring RandomPipeName() {
  static std::atomic<unsigned> counter{0};
  static thread_local std::mt19937 rng(std::random_device{}() ^ GetCurrentProcessId());
  wchar_t name[96];
  swprintf(name, sizeof name / sizeof name[0], L"\\\\.\\pipe\\node-mp-%lu-%u-%08x",
           static_cast<unsigned long>(GetCurrentProcessId()), counter.fetch_add(1), static_cast<unsigned>(rng()));
  return name;
}

// socketpair(): [fd, fd], the two ends of a duplex byte pipe, neither inheritable.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HANDLE s = INVALID_HANDLE_VALUE;
  std::wstring name;
  for (int attempt = 0;; attempt++) {
    name = RandomPipeName();
    s = CreateNamedPipeW(name.c_str(), PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE,
                         PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS, 1, kPipeBuffer,
                         kPipeBuffer, 0, nullptr);
    if (s != INVALID_HANDLE_VALUE) break;
    DWORD e = GetLastError();
    // The name is taken (another process's pipe): try another one.
    if ((e != ERROR_ACCESS_DENIED && e != ERROR_PIPE_BUSY) || attempt >= 100) ThrowWin32(env, e, "CreateNamedPipeW");
  }
  ScopedHandle server(s);
  // Only one instance exists and we connect to it at once, before anyone can guess its name.
  ScopedHandle client(CreateFileW(name.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING,
                                  SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, nullptr));
  if (!client.valid()) ThrowWin32(env, GetLastError(), "CreateFileW");
  if (!ConnectNamedPipe(server.get(), nullptr)) {
    DWORD e = GetLastError();
    if (e != ERROR_PIPE_CONNECTED) ThrowWin32(env, e, "ConnectNamedPipe");
  }
  int a = HandleToFd(env, server.release(), "_open_osfhandle");
  int b;
  try {
    b = HandleToFd(env, client.release(), "_open_osfhandle");
  } catch (...) {
    CloseFd(env, a);
    throw;
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, a));
  out.Set(1u, Napi::Number::New(env, b));
  return out;
}

const char kNoUnixSockets[] =
    "Unix domain sockets with fd passing do not exist on Windows (the 'forkserver' start method and the resource "
    "tracker are POSIX only); use the 'spawn' start method";

// sendMsg(fd, buffer, fds?): writes the whole buffer (waiting while a PIPE_NOWAIT pipe
// is full). fds cannot travel with the data on Windows.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  if (info.Length() > 2 && info[2].IsArray() && info[2].As<Napi::Array>().Length() > 0) {
    throw NotSupportedError(env,
                            "sendMsg: passing fds along with data (SCM_RIGHTS) does not exist on Windows; a child "
                            "receives handles through child_process.spawn's stdio");
  }
  HANDLE h = FdToHandle(env, fd, "WriteFile");
  WriteAll(env, h, data.Data(), data.Length());
  size_t sent = data.Length();
  return Napi::Number::New(env, static_cast<double>(sent));
}

// readExact(fd, n, timeoutMs?): exactly n bytes, waiting as needed. Throws an
// EOFError-named error if the other end closed first; null on timeout before any byte.
Napi::Value ReadExact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int64_t want = ArgInt64(info, 1, "length");
  int timeout = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  if (want < 0 || want > (int64_t(1) << 32)) throw Napi::RangeError::New(env, "length out of range");
  HANDLE h = FdToHandle(env, fd, "ReadFile");
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(want));
  size_t got = 0;
  while (got < static_cast<size_t>(want)) {
    if (!WaitReadable(h, got == 0 ? timeout : -1)) return env.Null();
    int64_t n = ReadOnce(env, h, out.Data() + got, static_cast<size_t>(want) - got);
    if (n < 0) continue;
    if (n == 0) {
      Napi::Error e = Napi::Error::New(env, "EOF: the other end closed the connection");
      e.Set("name", Napi::String::New(env, "EOFError"));
      e.Set("bytesRead", Napi::Number::New(env, static_cast<double>(got)));
      throw e;
    }
    got += static_cast<size_t>(n);
  }
  return out;
}

// read(fd, max): a Buffer (empty at EOF), or null when nothing is available now.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int64_t max = ArgInt64(info, 1, "maxBytes");
  if (max <= 0 || max > (1 << 30)) throw Napi::RangeError::New(env, "maxBytes out of range");
  HANDLE h = FdToHandle(env, fd, "ReadFile");
  std::vector<uint8_t> buf(static_cast<size_t>(max));
  int64_t n = ReadOnce(env, h, buf.data(), buf.size());
  if (n < 0) return env.Null();
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n));
}

// write(fd, buffer, offset?): bytes written now (0 if a PIPE_NOWAIT pipe is full).
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  int64_t off = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
  if (off < 0 || static_cast<size_t>(off) > data.Length()) throw Napi::RangeError::New(env, "offset out of range");
  HANDLE h = FdToHandle(env, fd, "WriteFile");
  size_t n = WriteOnce(env, h, data.Data() + off, data.Length() - static_cast<size_t>(off));
  return Napi::Number::New(env, static_cast<double>(n));
}

// setNonblock(fd, on = true): PIPE_NOWAIT / PIPE_WAIT on a pipe; files never block.
Napi::Value SetNonblockJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HANDLE h = FdToHandle(env, ArgInt(info, 0, "fd"), "SetNamedPipeHandleState");
  bool on = ArgBool(info, 1, true);
  DWORD type = GetFileType(h);
  if (type == FILE_TYPE_UNKNOWN && GetLastError() != NO_ERROR) ThrowWin32(env, GetLastError(), "GetFileType");
  if (type != FILE_TYPE_PIPE) return env.Undefined();
  DWORD mode = PIPE_READMODE_BYTE | (on ? PIPE_NOWAIT : PIPE_WAIT);
  if (!SetNamedPipeHandleState(h, &mode, nullptr, nullptr)) ThrowWin32(env, GetLastError(), "SetNamedPipeHandleState");
  return env.Undefined();
}

// ---------------------------------------------------------------------------
// Connection I/O (src/connection.ts). On Windows every fd is a pipe end (sockets are
// not CRT fds), so no fds travel with the data.

// isSocket(fd): false (after checking fd): Connections on Windows run over pipes.
Napi::Value IsSocket(const Napi::CallbackInfo& info) {
  FdToHandle(info.Env(), ArgInt(info, 0, "fd"), "isSocket");
  return Napi::Boolean::New(info.Env(), false);
}

// connRecv(fd, buf, offset, length, isSocket, timeoutMs): reads at most `length`
// bytes into buf[offset..]. Returns the count (0 at EOF) or -1 when nothing arrived
// (timeoutMs 0: would block; > 0: timed out; < 0 waits for ever).
Napi::Value ConnRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "buf must be a Buffer");
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  int64_t off = ArgInt64(info, 2, "offset");
  int64_t len = ArgInt64(info, 3, "length");
  int timeout = info.Length() > 5 && info[5].IsNumber() ? info[5].As<Napi::Number>().Int32Value() : 0;
  if (off < 0 || len <= 0 || static_cast<uint64_t>(off + len) > buf.Length())
    throw Napi::RangeError::New(env, "offset/length out of range");
  HANDLE h = FdToHandle(env, fd, "ReadFile");
  for (;;) {
    // Wait first: a pipe left in blocking mode must not block a call with a timeout.
    if (!WaitReadable(h, timeout < 0 ? -1 : timeout)) return Napi::Number::New(env, -1);
    int64_t n = ReadOnce(env, h, buf.Data() + off, static_cast<size_t>(len));
    if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
    if (timeout == 0) return Napi::Number::New(env, -1);
  }
}

// connSend(fd, header, body, offset, length, fds, isSocket): writes header then
// body[offset, offset+length) completely, waiting while the pipe is full. Throws on
// error (EPIPE when the reader is gone); fds cannot be sent on Windows.
Napi::Value ConnSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsBuffer())
    throw Napi::TypeError::New(env, "header and body must be Buffers");
  Napi::Buffer<uint8_t> header = info[1].As<Napi::Buffer<uint8_t>>();
  Napi::Buffer<uint8_t> body = info[2].As<Napi::Buffer<uint8_t>>();
  int64_t off = ArgInt64(info, 3, "offset");
  int64_t len = ArgInt64(info, 4, "length");
  if (off < 0 || len < 0 || static_cast<uint64_t>(off + len) > body.Length())
    throw Napi::RangeError::New(env, "offset/length out of range");
  if (info.Length() > 5 && info[5].IsArray() && info[5].As<Napi::Array>().Length() > 0) {
    throw NotSupportedError(env,
                            "connSend: passing fds along with data (SCM_RIGHTS) does not exist on Windows");
  }
  HANDLE h = FdToHandle(env, fd, "WriteFile");
  WriteAll(env, h, header.Data(), header.Length());
  WriteAll(env, h, body.Data() + off, static_cast<size_t>(len));
  return env.Undefined();
}

// connSendText(fd, prefix, text): as on POSIX (socket.cc): one framed message of
// `prefix` then `text` in UTF-8.
Napi::Value ConnSendText(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsString())
    throw Napi::TypeError::New(env, "prefix must be a Buffer and text a string");
  Napi::Buffer<uint8_t> prefix = info[1].As<Napi::Buffer<uint8_t>>();
  std::string text = info[2].As<Napi::String>().Utf8Value();
  const size_t body_len = prefix.Length() + text.size();
  if (prefix.Length() > 8 || body_len > 0x7fffffff) throw Napi::RangeError::New(env, "prefix or text too long");
  uint8_t header[4] = {static_cast<uint8_t>(body_len >> 24), static_cast<uint8_t>(body_len >> 16),
                       static_cast<uint8_t>(body_len >> 8), static_cast<uint8_t>(body_len)};
  HANDLE h = FdToHandle(env, fd, "WriteFile");
  WriteAll(env, h, header, sizeof header);
  WriteAll(env, h, prefix.Data(), prefix.Length());
  WriteAll(env, h, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  return env.Undefined();
}

const char kNoTcp[] =
    "TCP Listener/Client connections are not supported on Windows by this addon (Winsock sockets are not fds); "
    "use Pipe() between processes";

// setNodelay(fd): ignored (no TCP sockets among the fds here), as for non-TCP fds on POSIX.
Napi::Value SetNodelay(const Napi::CallbackInfo& info) {
  ArgInt(info, 0, "fd");
  return info.Env().Undefined();
}

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("isSocket", Napi::Function::New(env, IsSocket, "isSocket"));
  exports.Set("connRecv", Napi::Function::New(env, ConnRecv, "connRecv"));
  exports.Set("connSend", Napi::Function::New(env, ConnSend, "connSend"));
  exports.Set("connSendText", Napi::Function::New(env, ConnSendText, "connSendText"));
  exports.Set("tcpListen", NotSupportedFunction(env, "tcpListen", kNoTcp));
  exports.Set("tcpConnect", NotSupportedFunction(env, "tcpConnect", kNoTcp));
  exports.Set("socketError", NotSupportedFunction(env, "socketError", kNoTcp));
  exports.Set("setNodelay", Napi::Function::New(env, SetNodelay, "setNodelay"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("unixListen", NotSupportedFunction(env, "unixListen", kNoUnixSockets));
  exports.Set("unixConnect", NotSupportedFunction(env, "unixConnect", kNoUnixSockets));
  exports.Set("accept", NotSupportedFunction(env, "accept", kNoUnixSockets));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg",
              NotSupportedFunction(env, "recvMsg",
                                   "recvMsg: receiving fds along with data (SCM_RIGHTS) does not exist on Windows; "
                                   "use readExact() or read() for data"));
  exports.Set("readExact", Napi::Function::New(env, ReadExact, "readExact"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("setNonblock", Napi::Function::New(env, SetNonblockJs, "setNonblock"));
  InitNamedPipe(env, exports);  // AF_PIPE Listener/Client, handle passing
}

}  // namespace mp
