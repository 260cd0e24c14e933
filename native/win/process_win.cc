// Processes on Windows: exit, wait, kill, pipes and fds. 'spawn' is the only start
// method there, so fork() and the park library do not exist; the rest exports the
// same JS names and signatures as native/fork.cc.
//
// fds are those of Node's own C runtime table (see win_util.h), plus the shared
// memory numbers of shared_memory_win.cc.
#include "win_util.h"

namespace mp {
namespace {

constexpr int kSigInt = 2;
constexpr int kSigQuit = 3;
constexpr int kSigKill = 9;
constexpr int kSigTerm = 15;

const char kNoFork[] = "fork() does not exist on Windows; use the 'spawn' start method";

Napi::Value Fork(const Napi::CallbackInfo& info) { throw NotSupportedError(info.Env(), kNoFork); }

Napi::Value SetParkLibrary(const Napi::CallbackInfo& info) { throw NotSupportedError(info.Env(), kNoFork); }

Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  int code = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  ExitProcess(static_cast<UINT>(code));
}

// Python's convention: exit code, or -signal when killed. kill() below ends a process
// with kTerminateExitBase + signal; kTerminateExitBase alone is CPython's terminate().
Napi::Value ExitCodeToJs(Napi::Env env, DWORD code) {
  if (code == kTerminateExitBase) return Napi::Number::New(env, -kSigTerm);
  if (code > kTerminateExitBase && code <= kTerminateExitBase + 64)
    return Napi::Number::New(env, -static_cast<double>(code - kTerminateExitBase));
  return Napi::Number::New(env, static_cast<double>(code));
}

// waitpid(pid, block): the exit code, or null if still running. Windows has no
// zombies to reap: the process object lives while someone (libuv) holds a handle.
Napi::Value WaitPid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DWORD pid = static_cast<DWORD>(ArgInt(info, 0, "pid"));
  bool block = ArgBool(info, 1, false);
  ScopedHandle h(OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid));
  if (!h.valid()) ThrowWin32(env, GetLastError(), "OpenProcess");
  DWORD w = WaitForSingleObject(h.get(), block ? INFINITE : 0);
  if (w == WAIT_TIMEOUT) return env.Null();
  if (w != WAIT_OBJECT_0) ThrowWin32(env, w == WAIT_FAILED ? GetLastError() : ERROR_GEN_FAILURE, "WaitForSingleObject");
  DWORD code = 0;
  if (!GetExitCodeProcess(h.get(), &code)) ThrowWin32(env, GetLastError(), "GetExitCodeProcess");
  return ExitCodeToJs(env, code);
}

// kill(pid, signal): true when sent, false when the process is gone. Windows has no
// signals: SIGTERM, SIGKILL, SIGINT and SIGQUIT end the process (TerminateProcess,
// as libuv does); 0 tells whether it is still running.
Napi::Value Kill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DWORD pid = static_cast<DWORD>(ArgInt(info, 0, "pid"));
  int sig = ArgInt(info, 1, "signal");
  if (sig != 0 && sig != kSigTerm && sig != kSigKill && sig != kSigInt && sig != kSigQuit) {
    throw UvError(env, UV_ENOSYS, "kill",
                  "signal " + std::to_string(sig) +
                      " does not exist on Windows: only SIGTERM, SIGKILL, SIGINT and SIGQUIT (which all end the "
                      "process) and 0 can be sent");
  }
  DWORD access = SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION | (sig != 0 ? PROCESS_TERMINATE : 0);
  ScopedHandle h(OpenProcess(access, FALSE, pid));
  if (!h.valid()) {
    DWORD e = GetLastError();
    if (e == ERROR_INVALID_PARAMETER) return Napi::Boolean::New(env, false);  // no such process
    ThrowWin32(env, e, "OpenProcess");
  }
  DWORD w = WaitForSingleObject(h.get(), 0);
  if (w == WAIT_OBJECT_0) return Napi::Boolean::New(env, false);  // exited already
  if (w != WAIT_TIMEOUT) ThrowWin32(env, w == WAIT_FAILED ? GetLastError() : ERROR_GEN_FAILURE, "WaitForSingleObject");
  if (sig == 0) return Napi::Boolean::New(env, true);
  if (!TerminateProcess(h.get(), kTerminateExitBase + static_cast<DWORD>(sig))) {
    DWORD e = GetLastError();
    // A process that is exiting refuses with ERROR_ACCESS_DENIED (libuv checks the same way).
    if (e == ERROR_ACCESS_DENIED && WaitForSingleObject(h.get(), 0) == WAIT_OBJECT_0)
      return Napi::Boolean::New(env, false);
    ThrowWin32(env, e, "TerminateProcess");
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value GetPid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(GetCurrentProcessId()));
}

Napi::Value GetPpid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(uv_os_getppid()));
}

// pipe(): [readFd, writeFd], neither end inheritable (as O_CLOEXEC).
Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SECURITY_ATTRIBUTES sa = {sizeof sa, nullptr, FALSE};
  HANDLE r = nullptr;
  HANDLE w = nullptr;
  if (!CreatePipe(&r, &w, &sa, 65536)) ThrowWin32(env, GetLastError(), "CreatePipe");
  int rfd;
  try {
    rfd = HandleToFd(env, r, "_open_osfhandle");
  } catch (...) {
    CloseHandle(w);
    throw;
  }
  int wfd;
  try {
    wfd = HandleToFd(env, w, "_open_osfhandle");
  } catch (...) {
    CloseFd(env, rfd);
    throw;
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, rfd));
  a.Set(1u, Napi::Number::New(env, wfd));
  return a;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (IsShmFd(fd)) {
    ShmCloseFd(env, fd);
  } else if (fd < 0 || uv_get_osfhandle(fd) == INVALID_HANDLE_VALUE || CloseFd(env, fd) != 0) {
    ThrowWin32(env, ERROR_INVALID_HANDLE, "close");
  }
  return env.Undefined();
}

// dup(fd): a new fd for a duplicate of fd's HANDLE, not inheritable (as F_DUPFD_CLOEXEC).
Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (IsShmFd(fd)) return Napi::Number::New(env, ShmDupFd(env, fd));
  HANDLE h = FdToHandle(env, fd, "dup");
  HANDLE d = nullptr;
  if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), &d, 0, FALSE, DUPLICATE_SAME_ACCESS))
    ThrowWin32(env, GetLastError(), "DuplicateHandle");
  return Napi::Number::New(env, HandleToFd(env, d, "_open_osfhandle"));
}

void SetInheritable(Napi::Env env, int fd, bool inheritable) {
  if (IsShmFd(fd)) {
    ShmSetInheritable(env, fd, inheritable);
    return;
  }
  HANDLE h = FdToHandle(env, fd, "SetHandleInformation");
  if (!SetHandleInformation(h, HANDLE_FLAG_INHERIT, inheritable ? HANDLE_FLAG_INHERIT : 0))
    ThrowWin32(env, GetLastError(), "SetHandleInformation");
}

// dup2(from, to): only from === to (clear close-on-exec) exists on Windows, where a
// child receives handles through child_process.spawn's stdio, not at fixed fd numbers.
Napi::Value Dup2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int from = ArgInt(info, 0, "fd");
  int to = ArgInt(info, 1, "fd");
  if (from != to) {
    throw NotSupportedError(env,
                            "dup2() onto another fd number does not exist on Windows: pass handles to a child "
                            "through the stdio option of child_process.spawn");
  }
  SetInheritable(env, to, true);
  return env.Undefined();
}

// setCloexec(fd, on = true): on Windows, whether the HANDLE is inherited by children.
Napi::Value SetCloexecJs(const Napi::CallbackInfo& info) {
  SetInheritable(info.Env(), ArgInt(info, 0, "fd"), !ArgBool(info, 1, true));
  return info.Env().Undefined();
}

Napi::Value FdIsOpen(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  bool open = IsShmFd(fd) ? ShmFdIsOpen(fd) : fd >= 0 && uv_get_osfhandle(fd) != INVALID_HANDLE_VALUE;
  return Napi::Boolean::New(info.Env(), open);
}

Napi::Value RunLoopOnce(const Napi::CallbackInfo& info) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(info.Env(), &loop);
  int alive = uv_run(loop, UV_RUN_ONCE);
  return Napi::Boolean::New(info.Env(), alive != 0);
}

Napi::Value LoopAlive(const Napi::CallbackInfo& info) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(info.Env(), &loop);
  return Napi::Boolean::New(info.Env(), uv_loop_alive(loop) != 0);
}

// Ends this process, as SIGKILL would (no cleanup), once the parent process has ended.
// arg: the parent's process handle, or null when the parent was gone already.
DWORD WINAPI WatchParent(LPVOID arg) {
  HANDLE parent = static_cast<HANDLE>(arg);
  if (parent != nullptr && WaitForSingleObject(parent, INFINITE) != WAIT_OBJECT_0) {
    return 0;  // cannot watch (should not happen with our own handle): leave the process alone
  }
  TerminateProcess(GetCurrentProcess(), kTerminateExitBase + kSigKill);
  ExitProcess(kTerminateExitBase + kSigKill);
}

// True when `parent` started before this process (so its pid was not reused by an
// unrelated process after the real parent died).
bool StartedBeforeUs(HANDLE parent) {
  FILETIME pc, mine, unused1, unused2, unused3;
  if (!GetProcessTimes(parent, &pc, &unused1, &unused2, &unused3)) return true;
  if (!GetProcessTimes(GetCurrentProcess(), &mine, &unused1, &unused2, &unused3)) return true;
  return CompareFileTime(&pc, &mine) <= 0;
}

// watchParentDeath(fd, parentPid?): a thread ends this process once its parent ends
// (daemonic children must not outlive a killed parent). On Windows the thread waits on
// the parent process itself: `fd` (the POSIX lifeline) is accepted and not needed.
// parentPid defaults to the parent of this process.
Napi::Value WatchParentDeath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() > 0 && !info[0].IsNumber() && !info[0].IsUndefined() && !info[0].IsNull())
    throw Napi::TypeError::New(env, "fd must be a number");
  int64_t ppid = info.Length() > 1 && info[1].IsNumber() ? ArgInt64(info, 1, "parentPid")
                                                         : static_cast<int64_t>(uv_os_getppid());
  if (ppid <= 0 || ppid > 0xffffffffLL) throw UvError(env, UV_ESRCH, "watchParentDeath", "cannot tell the parent process");
  HANDLE parent = OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, FALSE, static_cast<DWORD>(ppid));
  if (parent == nullptr) {
    DWORD e = GetLastError();
    if (e != ERROR_INVALID_PARAMETER) ThrowWin32(env, e, "OpenProcess");
    // The parent is gone already: the thread ends this process at once.
  } else if (!StartedBeforeUs(parent)) {
    CloseHandle(parent);  // its pid now names another process: the parent is gone
    parent = nullptr;
  }
  HANDLE t = CreateThread(nullptr, 64 * 1024, WatchParent, parent, STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
  if (t == nullptr) {
    DWORD e = GetLastError();
    if (parent != nullptr) CloseHandle(parent);
    ThrowWin32(env, e, "CreateThread");
  }
  CloseHandle(t);  // the thread keeps `parent` open for its whole life
  return env.Undefined();
}

// No PR_SET_PDEATHSIG on Windows (watchParentDeath does the job).
Napi::Value SetPdeathsig(const Napi::CallbackInfo& info) {
  ArgInt(info, 0, "signal");
  return Napi::Boolean::New(info.Env(), false);
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("fork", Napi::Function::New(env, Fork, "fork"));
  exports.Set("setParkLibrary", Napi::Function::New(env, SetParkLibrary, "setParkLibrary"));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow, "exitNow"));
  exports.Set("waitpid", Napi::Function::New(env, WaitPid, "waitpid"));
  exports.Set("waitpidNoReap", Napi::Function::New(env, WaitPid, "waitpidNoReap"));
  exports.Set("kill", Napi::Function::New(env, Kill, "kill"));
  exports.Set("getpid", Napi::Function::New(env, GetPid, "getpid"));
  exports.Set("getppid", Napi::Function::New(env, GetPpid, "getppid"));
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("dup2", Napi::Function::New(env, Dup2, "dup2"));
  exports.Set("setCloexec", Napi::Function::New(env, SetCloexecJs, "setCloexec"));
  exports.Set("fdIsOpen", Napi::Function::New(env, FdIsOpen, "fdIsOpen"));
  exports.Set("runLoopOnce", Napi::Function::New(env, RunLoopOnce, "runLoopOnce"));
  exports.Set("loopAlive", Napi::Function::New(env, LoopAlive, "loopAlive"));
  exports.Set("watchParentDeath", Napi::Function::New(env, WatchParentDeath, "watchParentDeath"));
  exports.Set("setPdeathsig", Napi::Function::New(env, SetPdeathsig, "setPdeathsig"));
  // Windows only: exit codes of processes ended by kill() are terminateExitBase + signal.
  exports.Set("terminateExitBase", Napi::Number::New(env, kTerminateExitBase));
}

}  // namespace mp
