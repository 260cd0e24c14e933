// Named pipes on Windows: the 'AF_PIPE' family of Listener/Client (CPython's
// PipeListener and PipeClient in multiprocessing/connection.py) and handle passing
// between processes (CPython's reduction.DupHandle / duplicate).
//
//  - new PipeListener(name, backlog?): creates the first instance of the named pipe
//    \\.\pipe\... (FILE_FLAG_FIRST_PIPE_INSTANCE: a name already in use fails with
//    code 'EADDRINUSE'). Like CPython's PipeListener there is always one instance
//    waiting for a client, so a client can connect before accept() is called; the
//    backlog is accepted and ignored, as CPython does.
//  - listener.accept(): a Promise of the fd of a connected instance. It first creates
//    the next instance (clients can keep connecting), then a thread of its own waits
//    in ConnectNamedPipe on the oldest one: the JS thread never blocks, and pending
//    accepts keep the event loop alive (as a listening socket being polled does).
//    Several accepts may be pending at once; each has its own instance and thread.
//  - listener.close(): closes the waiting instance and ends pending accepts, which
//    reject with code 'ECANCELED'.
//  - pipeConnect(name, timeoutMs): the fd of a client end, or null when every instance
//    is busy (ERROR_PIPE_BUSY) until timeoutMs has passed (0: one attempt, never
//    waits). A name nobody listens on fails at once (code 'ENOENT'), as in CPython.
//  - duplicateHandleTo(fd, pid) -> the value, in process pid, of a new handle for
//    fd's HANDLE (pid may be this process: CPython's DupHandle with pid=None).
//  - handleToFd(handle, sourcePid?) -> an fd for a handle. With a sourcePid other
//    than this process, the handle is taken out of that process (DuplicateHandle with
//    DUPLICATE_CLOSE_SOURCE: CPython's DupHandle.detach()); otherwise it is already
//    this process's.
//  - closeRemoteHandle(pid, handle): closes a handle made by duplicateHandleTo that
//    will not be used (in this process or in process pid).
//
// Every instance and client end is a byte-mode pipe opened for synchronous I/O
// (no FILE_FLAG_OVERLAPPED), like the ends of socketpair() in socket_win.cc: the fds
// are read and written by socket_win.cc's ReadFile/WriteFile without an OVERLAPPED,
// which Windows documents as unreliable on a handle opened for overlapped I/O. The
// waiting thread therefore blocks in a synchronous ConnectNamedPipe, and close()
// ends it with CancelSynchronousIo. Handles made here are never inheritable.
//
// Differences from CPython: CPython's pipes are message-mode and its PipeConnection
// frames by message; here the pipes are byte-mode and carry the same length-prefixed
// framing as every other Connection, so a Python peer cannot talk to a Node peer over
// AF_PIPE (it can over AF_INET). Duplicated handles keep their access rights
// (DUPLICATE_SAME_ACCESS; CPython narrows them to read or write): a Connection sets
// its pipe's mode (SetNamedPipeHandleState), which needs FILE_WRITE_ATTRIBUTES.
#include "win_util.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace mp {
namespace {

constexpr DWORD kPipeBufferSize = 65536;  // as socketpair() in socket_win.cc
constexpr DWORD kThreadStack = 64 * 1024;

// The address on an error, as Node's net errors carry it.
Napi::Error WithAddress(Napi::Error e, const std::string& address) {
  e.Set("address", Napi::String::New(e.Env(), address));
  return e;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

// A process id argument (DWORD).
DWORD ArgPid(const Napi::CallbackInfo& info, size_t i) {
  int64_t pid = ArgInt64(info, i, "pid");
  if (pid <= 0 || pid > 0xffffffffLL) throw Napi::RangeError::New(info.Env(), "pid out of range");
  return static_cast<DWORD>(pid);
}

// A HANDLE value argument, as duplicateHandleTo returns it. Handle values that cross
// processes fit in 32 bits (Windows keeps them so for 32-bit processes).
HANDLE ArgHandle(const Napi::CallbackInfo& info, size_t i) {
  int64_t v = ArgInt64(info, i, "handle");
  if (v <= 0 || v > 0xffffffffLL) throw Napi::RangeError::New(info.Env(), "handle out of range");
  return reinterpret_cast<HANDLE>(static_cast<uintptr_t>(v));
}

Napi::Value HandleValue(Napi::Env env, HANDLE h) {
  return Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(h)));
}

// ---------------------------------------------------------------------------
// PipeListener

class PipeListener;

struct AcceptOp;
void AcceptDone(Napi::Env env, Napi::Function unused, std::nullptr_t* context, std::shared_ptr<AcceptOp>* data);
using AcceptTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, std::shared_ptr<AcceptOp>, AcceptDone>;

// One pending accept. Shared by the listener (to cancel it), its thread (until it has
// posted the result) and the posted result (until AcceptDone ran on the JS thread).
struct AcceptOp {
  explicit AcceptOp(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  ~AcceptOp() {
    if (pipe != INVALID_HANDLE_VALUE) CloseHandle(pipe);
    if (thread != nullptr) CloseHandle(thread);
  }
  AcceptOp(const AcceptOp&) = delete;
  AcceptOp& operator=(const AcceptOp&) = delete;

  // Set before the thread starts; owned by the op until handed to JS as an fd.
  HANDLE pipe = INVALID_HANDLE_VALUE;
  // JS thread only.
  HANDLE thread = nullptr;
  PipeListener* listener = nullptr;  // null once the listener closed or was collected
  Napi::Promise::Deferred deferred;
  AcceptTsfn tsfn;
  // Set by the JS thread to end the wait; the thread checks it before waiting.
  std::atomic<bool> cancelled{false};
  // Written by the thread before it posts the op (the post orders it for the JS thread).
  DWORD error = ERROR_SUCCESS;
};

DWORD WINAPI AcceptThread(LPVOID arg) {
  std::unique_ptr<std::shared_ptr<AcceptOp>> holder(static_cast<std::shared_ptr<AcceptOp>*>(arg));
  std::shared_ptr<AcceptOp> op = *holder;
  holder.reset();
  DWORD err = ERROR_OPERATION_ABORTED;
  if (!op->cancelled.load()) {
    err = ERROR_SUCCESS;
    if (!ConnectNamedPipe(op->pipe, nullptr)) {
      err = GetLastError();
      // ERROR_PIPE_CONNECTED: a client connected before we waited. ERROR_NO_DATA: it
      // connected, wrote and closed already (CPython's bpo-14725): still a connection,
      // whose data can be read.
      if (err == ERROR_PIPE_CONNECTED || err == ERROR_NO_DATA) err = ERROR_SUCCESS;
    }
  }
  op->error = err;
  AcceptTsfn tsfn = op->tsfn;
  auto* result = new std::shared_ptr<AcceptOp>(std::move(op));
  // Fails only while the JS environment is being torn down: nothing to report to.
  if (tsfn.BlockingCall(result) != napi_ok) delete result;
  tsfn.Release();
  return 0;
}

// Ends op's wait: the thread either has not called ConnectNamedPipe yet (it sees
// `cancelled`) or is blocked in it (CancelSynchronousIo ends it). Retried until the
// thread has ended, which closes the race between the two. JS thread only.
void CancelAccept(AcceptOp* op) {
  op->cancelled.store(true);
  if (op->thread == nullptr) return;
  for (;;) {
    if (WaitForSingleObject(op->thread, 0) != WAIT_TIMEOUT) return;  // ended (or cannot wait: nothing to do)
    CancelSynchronousIo(op->thread);  // ERROR_NOT_FOUND while it is not in ConnectNamedPipe
    if (WaitForSingleObject(op->thread, 5) != WAIT_TIMEOUT) return;
  }
}

class PipeListener : public Napi::ObjectWrap<PipeListener> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PipeListener",
                       {InstanceMethod("accept", &PipeListener::Accept), InstanceMethod("close", &PipeListener::Close)});
  }

  // new PipeListener(name, backlog?)
  PipeListener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PipeListener>(info) {
    Napi::Env env = info.Env();
    address_ = ArgString(info, 0, "name");
    if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) ArgInt(info, 1, "backlog");
    name_ = Utf8ToWide(env, address_);
    pending_ = NewInstance(env, true);
  }

  ~PipeListener() override { CloseAll(); }

  // Called by AcceptDone: op no longer needs cancelling.
  void Forget(AcceptOp* op) {
    ops_.erase(std::remove_if(ops_.begin(), ops_.end(), [op](const std::shared_ptr<AcceptOp>& o) { return o.get() == op; }),
               ops_.end());
  }

 private:
  // A new listening instance of the pipe; throws on failure.
  HANDLE NewInstance(Napi::Env env, bool first) {
    HANDLE h = CreateNamedPipeW(name_.c_str(), PIPE_ACCESS_DUPLEX | (first ? FILE_FLAG_FIRST_PIPE_INSTANCE : 0),
                                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT, PIPE_UNLIMITED_INSTANCES,
                                kPipeBufferSize, kPipeBufferSize, 0, nullptr);
    if (h == INVALID_HANDLE_VALUE) {
      DWORD e = GetLastError();
      // FILE_FLAG_FIRST_PIPE_INSTANCE refuses a name that exists with ERROR_ACCESS_DENIED.
      if (first && e == ERROR_ACCESS_DENIED)
        throw WithAddress(Win32Error(env, e, "CreateNamedPipeW", UV_EADDRINUSE), address_);
      throw WithAddress(Win32Error(env, e, "CreateNamedPipeW"), address_);
    }
    return h;
  }

  // accept(): Promise<fd>
  Napi::Value Accept(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw UvError(env, UV_EBADF, "accept", "the listener is closed");
    // As CPython: the next instance first, so that clients can connect while we wait.
    ScopedHandle next(NewInstance(env, false));
    auto op = std::make_shared<AcceptOp>(env);
    op->listener = this;
    op->tsfn = AcceptTsfn::New(env, "mp.PipeListener.accept", 0, 1);
    op->pipe = pending_;
    auto* holder = new std::shared_ptr<AcceptOp>(op);
    HANDLE t = CreateThread(nullptr, kThreadStack, AcceptThread, holder, STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
    if (t == nullptr) {
      DWORD e = GetLastError();
      op->pipe = INVALID_HANDLE_VALUE;  // still pending_: the listener keeps it
      delete holder;
      op->tsfn.Release();
      throw Win32Error(env, e, "CreateThread");
    }
    op->thread = t;
    pending_ = next.release();
    ops_.push_back(op);
    return op->deferred.Promise();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseAll();
    return info.Env().Undefined();
  }

  // Ends pending accepts (they reject from AcceptDone) and closes the waiting instance.
  // Uses no JS: also runs from the destructor.
  void CloseAll() {
    if (closed_) return;
    closed_ = true;
    std::vector<std::shared_ptr<AcceptOp>> ops;
    ops.swap(ops_);
    for (const auto& op : ops) {
      op->listener = nullptr;
      CancelAccept(op.get());
    }
    if (pending_ != INVALID_HANDLE_VALUE) CloseHandle(pending_);
    pending_ = INVALID_HANDLE_VALUE;
  }

  std::string address_;
  std::wstring name_;
  HANDLE pending_ = INVALID_HANDLE_VALUE;  // the instance the next accept() waits on
  std::vector<std::shared_ptr<AcceptOp>> ops_;
  bool closed_ = false;
};

// On the JS thread, once an accept thread has a result; env is null while the
// environment is torn down (the op's destructor then closes what it holds).
void AcceptDone(Napi::Env env, Napi::Function, std::nullptr_t*, std::shared_ptr<AcceptOp>* data) {
  std::unique_ptr<std::shared_ptr<AcceptOp>> holder(data);
  AcceptOp* op = holder->get();
  if (env == nullptr) return;
  PipeListener* listener = op->listener;
  if (listener != nullptr) listener->Forget(op);
  op->listener = nullptr;
  try {
    if (op->cancelled.load()) {
      op->deferred.Reject(UvError(env, UV_ECANCELED, "accept", "the listener was closed").Value());
    } else if (op->error != ERROR_SUCCESS) {
      op->deferred.Reject(Win32Error(env, op->error, "ConnectNamedPipe").Value());
    } else {
      HANDLE h = op->pipe;
      op->pipe = INVALID_HANDLE_VALUE;
      int fd = HandleToFd(env, h, "_open_osfhandle");  // closes h when it fails
      op->deferred.Resolve(Napi::Number::New(env, fd));
    }
  } catch (const Napi::Error& e) {
    try {
      op->deferred.Reject(e.Value());
    } catch (...) {
      // Nothing left to report to (the environment is going away); never throw into Node.
    }
  }
}

// ---------------------------------------------------------------------------
// Client

// pipeConnect(name, timeoutMs): fd, or null if every instance stayed busy.
Napi::Value PipeConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string address = ArgString(info, 0, "name");
  int64_t timeout = info.Length() > 1 && info[1].IsNumber() ? ArgInt64(info, 1, "timeoutMs") : 0;
  if (timeout < 0) throw Napi::RangeError::New(env, "timeoutMs must not be negative");
  std::wstring name = Utf8ToWide(env, address);
  ULONGLONG deadline = GetTickCount64() + static_cast<ULONGLONG>(timeout);
  HANDLE h = INVALID_HANDLE_VALUE;
  for (;;) {
    // SECURITY_IDENTIFICATION: the server may learn who we are, not act as us.
    h = CreateFileW(name.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING,
                    SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, nullptr);
    if (h != INVALID_HANDLE_VALUE) break;
    DWORD e = GetLastError();
    if (e != ERROR_PIPE_BUSY) throw WithAddress(Win32Error(env, e, "CreateFileW"), address);
    ULONGLONG now = GetTickCount64();
    if (now >= deadline) return env.Null();
    // Never 0 (NMPWAIT_USE_DEFAULT_WAIT): wait at most what is left, in slices of 1 s (as CPython).
    DWORD slice = static_cast<DWORD>(std::min<ULONGLONG>(deadline - now, 1000));
    if (!WaitNamedPipeW(name.c_str(), slice)) {
      e = GetLastError();
      if (e != ERROR_SEM_TIMEOUT && e != ERROR_PIPE_BUSY) throw WithAddress(Win32Error(env, e, "WaitNamedPipeW"), address);
    }
  }
  ScopedHandle client(h);
  DWORD mode = PIPE_READMODE_BYTE;
  if (!SetNamedPipeHandleState(client.get(), &mode, nullptr, nullptr))
    throw WithAddress(Win32Error(env, GetLastError(), "SetNamedPipeHandleState"), address);
  return Napi::Number::New(env, HandleToFd(env, client.release(), "_open_osfhandle"));
}

// ---------------------------------------------------------------------------
// Handle passing

// duplicateHandleTo(fd, pid): the value of a new, non-inheritable handle in process
// pid for fd's HANDLE. The caller sends the value to that process (handleToFd), or
// closes it with closeRemoteHandle if it will not be used.
Napi::Value DuplicateHandleTo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HANDLE h = FdToHandle(env, ArgInt(info, 0, "fd"), "DuplicateHandle");
  DWORD pid = ArgPid(info, 1);
  bool self = pid == GetCurrentProcessId();
  ScopedHandle proc(self ? nullptr : OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid));
  if (!self && !proc.valid()) ThrowWin32(env, GetLastError(), "OpenProcess");
  HANDLE out = nullptr;
  if (!DuplicateHandle(GetCurrentProcess(), h, self ? GetCurrentProcess() : proc.get(), &out, 0, FALSE,
                       DUPLICATE_SAME_ACCESS))
    ThrowWin32(env, GetLastError(), "DuplicateHandle");
  return HandleValue(env, out);
}

// handleToFd(handle, sourcePid?): an fd for the handle, taken out of process sourcePid
// (closing it there) when that is another process.
Napi::Value HandleToFdJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  HANDLE h = ArgHandle(info, 0);
  bool remote = info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull();
  DWORD pid = remote ? ArgPid(info, 1) : GetCurrentProcessId();
  if (pid == GetCurrentProcessId()) {
    // Not a handle of this process: fail without closing it (HandleToFd would).
    SetLastError(NO_ERROR);
    if (GetFileType(h) == FILE_TYPE_UNKNOWN) {
      DWORD e = GetLastError();
      if (e != NO_ERROR) ThrowWin32(env, e, "GetFileType");
    }
    return Napi::Number::New(env, HandleToFd(env, h, "_open_osfhandle"));
  }
  ScopedHandle source(OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid));
  if (!source.valid()) ThrowWin32(env, GetLastError(), "OpenProcess");
  HANDLE out = nullptr;
  // DUPLICATE_CLOSE_SOURCE closes the source handle even when the call fails.
  if (!DuplicateHandle(source.get(), h, GetCurrentProcess(), &out, 0, FALSE,
                       DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE))
    ThrowWin32(env, GetLastError(), "DuplicateHandle");
  return Napi::Number::New(env, HandleToFd(env, out, "_open_osfhandle"));
}

// closeRemoteHandle(pid, handle): closes a handle of process pid (this one or another).
Napi::Value CloseRemoteHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DWORD pid = ArgPid(info, 0);
  HANDLE h = ArgHandle(info, 1);
  if (pid == GetCurrentProcessId()) {
    if (!CloseHandle(h)) ThrowWin32(env, GetLastError(), "CloseHandle");
    return env.Undefined();
  }
  ScopedHandle source(OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid));
  if (!source.valid()) ThrowWin32(env, GetLastError(), "OpenProcess");
  if (!DuplicateHandle(source.get(), h, nullptr, nullptr, 0, FALSE, DUPLICATE_CLOSE_SOURCE))
    ThrowWin32(env, GetLastError(), "DuplicateHandle");
  return env.Undefined();
}

}  // namespace

void InitNamedPipe(Napi::Env env, Napi::Object exports) {
  exports.Set("PipeListener", PipeListener::Define(env));
  exports.Set("pipeConnect", Napi::Function::New(env, PipeConnect, "pipeConnect"));
  exports.Set("duplicateHandleTo", Napi::Function::New(env, DuplicateHandleTo, "duplicateHandleTo"));
  exports.Set("handleToFd", Napi::Function::New(env, HandleToFdJs, "handleToFd"));
  exports.Set("closeRemoteHandle", Napi::Function::New(env, CloseRemoteHandle, "closeRemoteHandle"));
}

}  // namespace mp
