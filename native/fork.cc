// Processes: fork() that works for a Node process (FORK.md), exit, wait, kill, pipes.
#include "common.h"
#include <uv.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cstring>
#include <vector>
#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif
#ifdef __APPLE__
#include <crt_externs.h>  // a shared library on macOS reaches environ only this way
#define environ (*_NSGetEnviron())
#else
extern char** environ;
#endif

namespace mp {
namespace {

// Hooks of the per-Node-version park library (native/park.cc), found with dlsym.
typedef int (*ParkFn)(int timeout_ms);
typedef void (*VoidFn)();
ParkFn park_threads = nullptr;
VoidFn unpark_threads = nullptr;
VoidFn park_after_fork_child = nullptr;
VoidFn park_begin = nullptr;   // optional: parking starts while JS prepares the fork
VoidFn park_cancel = nullptr;

// V8 marks its heap MADV_DONTFORK; without this pass a forked child has no heap.
// The first pass goes range by range through /proc/self/maps (~0.3 ms here) and
// learns which mappings refuse the advice (VM_IO ones such as [vvar] say EINVAL).
// Later passes advise the gaps between those in a few calls: Linux applies advice to
// every mapping in a range and reports the holes between mappings as ENOMEM.
#ifdef MADV_DOFORK
std::vector<std::pair<uintptr_t, uintptr_t>> refusing_ranges;
uintptr_t highest_mapping_end = 0;

bool AdviseDoforkGap(uintptr_t from, uintptr_t to) {
  if (to <= from) return true;
  return madvise(reinterpret_cast<void*>(from), to - from, MADV_DOFORK) == 0 || errno == ENOMEM;
}

bool MadviseDoforkByGaps() {
  if (highest_mapping_end == 0) return false;
  uintptr_t from = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (const auto& r : refusing_ranges) {
    if (!AdviseDoforkGap(from, r.first)) return false;
    from = r.second;
  }
  return AdviseDoforkGap(from, highest_mapping_end);
}
#endif

#ifdef MADV_DOFORK
/** /proc/self/maps as text; empty if it cannot be read. */
std::string ReadOwnMaps() {
  std::string maps;
  int fd = RetryEintr([] { return open("/proc/self/maps", O_RDONLY | O_CLOEXEC); });
  if (fd == -1) return maps;
  char buf[65536];
  for (;;) {
    ssize_t n = RetryEintr([&] { return read(fd, buf, sizeof buf); });
    if (n <= 0) break;
    maps.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return maps;
}

/** A line of /proc/self/maps. */
struct Mapping {
  uintptr_t start, end;
  char perms[8];
  unsigned long inode;
  bool named;  // a path or [name] after the inode
};

/** Calls fn(const Mapping&) for each mapping of this process. */
template <typename F>
void ForEachMapping(F fn) {
  std::string maps = ReadOwnMaps();
  size_t pos = 0;
  while (pos < maps.size()) {
    size_t eol = maps.find('\n', pos);
    if (eol == std::string::npos) eol = maps.size();
    unsigned long start = 0, end = 0, offset = 0;
    Mapping m{};
    char dev[16] = {0};
    int name_at = 0;
    const char* line = maps.c_str() + pos;
    if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &start, &end, m.perms, &offset, dev, &m.inode, &name_at) >= 6 &&
        end > start) {
      m.start = start;
      m.end = end;
      m.named = name_at > 0 && pos + static_cast<size_t>(name_at) < eol;
      fn(m);
    }
    pos = eol + 1;
  }
}
#endif

void MadviseDoforkAll() {
#ifdef MADV_DOFORK
  // Now and then the whole pass again, in case a refusing mapping was replaced.
  static unsigned passes = 0;
  if (++passes % 256 != 1 && MadviseDoforkByGaps()) return;
  std::vector<std::pair<uintptr_t, uintptr_t>> refusing;
  uintptr_t highest = 0;
  ForEachMapping([&](const Mapping& m) {
    if (madvise(reinterpret_cast<void*>(m.start), m.end - m.start, MADV_DOFORK) != 0) {
      // [vvar], [vsyscall] and the like: nothing to do for them, but no gap may cover them.
      refusing.emplace_back(m.start, m.end);
    } else if (m.end > highest) {
      highest = m.end;
    }
  });
  if (highest == 0) return;  // /proc/self/maps unreadable
  // Refusing ranges above every other mapping ([vsyscall]) need no gap of their own.
  while (!refusing.empty() && refusing.back().first >= highest) refusing.pop_back();
  refusing_ranges = std::move(refusing);
  highest_mapping_end = highest;
#endif
}

// V8 marks its heap pages MADV_DONTFORK so that Node's own fork+exec (child_process)
// need not copy their page tables; the DOFORK pass above undoes that, and a parent with a
// 100 MB heap then took 13.6 ms instead of 2.8 ms per spawnSync here. After a fork the
// parent gives the flag back to the ranges shaped like V8's pages: anonymous, private,
// read-write, 256 KiB-aligned and -sized, not against a guard or reserve (---p: thread
// stacks, malloc arenas) and not a glibc mmapped chunk (a large Buffer). Which ranges had
// the flag only smaps tells, and reading it costs 1-20 ms. A V8 page left out only costs a
// spawn time; the shape test keeps other memory out, which a fork without exec may need.
Napi::Value RestoreDontfork(const Napi::CallbackInfo& info) {
  int restored = 0;
#if defined(MADV_DONTFORK) && defined(__linux__)
  struct Range { uintptr_t start, end; bool anon_rw, reserve; };
  std::vector<Range> ranges;
  ForEachMapping([&](const Mapping& m) {
    ranges.push_back({m.start, m.end, m.inode == 0 && !m.named && strcmp(m.perms, "rw-p") == 0, strcmp(m.perms, "---p") == 0});
  });
  const uintptr_t kV8Page = 256 * 1024;
  for (size_t i = 0; i < ranges.size(); i++) {
    const Range& r = ranges[i];
    size_t len = r.end - r.start;
    if (!r.anon_rw || r.start % kV8Page != 0 || len % kV8Page != 0) continue;
    if (i > 0 && ranges[i - 1].end == r.start && ranges[i - 1].reserve) continue;
    if (i + 1 < ranges.size() && ranges[i + 1].start == r.end && ranges[i + 1].reserve) continue;
    size_t header[2];
    memcpy(header, reinterpret_cast<const void*>(r.start), sizeof header);
    if ((header[1] & 2) != 0 && (header[1] & ~static_cast<size_t>(7)) == len) continue;  // IS_MMAPPED chunk
    if (madvise(reinterpret_cast<void*>(r.start), len, MADV_DONTFORK) == 0) restored++;
  }
#endif
  return Napi::Number::New(info.Env(), restored);
}

// A fd that never becomes readable: put in place of inherited listening sockets.
int dead_fd = -1;

void DisarmHandle(uv_handle_t* handle, void*) {
  if (handle->type != UV_TCP && handle->type != UV_NAMED_PIPE) return;
  uv_os_fd_t fd;
  if (uv_fileno(handle, &fd) != 0 || fd < 0) return;
  int listening = 0;
  socklen_t len = sizeof listening;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) return;
  if (dead_fd == -1) {
    int p[2];
    if (pipe(p) != 0) return;
    SetCloexec(p[0], true);
    SetCloexec(p[1], true);
    dead_fd = p[0];  // p[1] stays open (never written) so p[0] never reports EOF.
  }
  // The child's copy of the listening socket is gone; the parent's stays intact.
  if (RetryEintr([&] { return dup2(dead_fd, fd); }) != -1) SetCloexec(fd, true);
  uv_unref(handle);
}

Napi::Value Fork(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int park_timeout = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 5000;
  // The forkserver ignores SIGINT (see SetSigintIgnored); its children must not. SIGINT
  // stays blocked across the fork, so one sent to the child before it resets the
  // disposition waits (Linux keeps a blocked signal pending though it is ignored)
  // instead of being dropped: interrupt() right after start() still ends the child.
  bool default_sigint = ArgBool(info, 1, false);
  sigset_t sigint_set, old_mask;
  sigemptyset(&sigint_set);
  sigaddset(&sigint_set, SIGINT);
  if (default_sigint) pthread_sigmask(SIG_BLOCK, &sigint_set, &old_mask);
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    if (park_cancel) park_cancel();
    if (default_sigint) pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    throw Napi::Error::New(env, "fork: cannot get the event loop");
  }
  MadviseDoforkAll();
  if (park_threads) {
    int r = park_threads(park_timeout);
    if (r < 0) ThrowErrno(env, -r, "fork (parking V8 platform threads)");
  }
  pid_t pid = fork();
  if (default_sigint) {
    if (pid == 0) signal(SIGINT, SIG_DFL);
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  }
  if (pid == 0) {
    if (park_after_fork_child) park_after_fork_child();
    uv_walk(loop, DisarmHandle, nullptr);
    int r = uv_loop_fork(loop);
    if (r != 0) {
      fprintf(stderr, "node-multiprocessing: uv_loop_fork failed in child: %s\n", uv_strerror(r));
      _exit(70);
    }
    // Only after uv_loop_fork: until then the loop's epoll instance is the parent's,
    // and stopping a watcher could remove the parent's registration.
    StopInheritedWatchers();
    return Napi::Number::New(env, 0);
  }
  int saved = errno;
  if (unpark_threads) unpark_threads();
  if (pid < 0) ThrowErrno(env, saved, "fork");
  return Napi::Number::New(env, pid);
}

Napi::Value SetParkLibrary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  // The library is already loaded by process.dlopen: take a handle to that copy.
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (!h) h = dlopen(path.c_str(), RTLD_NOW);
  if (!h) throw Napi::Error::New(env, std::string("dlopen: ") + dlerror());
  auto p = reinterpret_cast<ParkFn>(dlsym(h, "mp_park_threads"));
  auto u = reinterpret_cast<VoidFn>(dlsym(h, "mp_unpark_threads"));
  auto c = reinterpret_cast<VoidFn>(dlsym(h, "mp_park_after_fork_child"));
  if (!p || !u || !c) throw Napi::Error::New(env, "park library lacks mp_park_threads/mp_unpark_threads");
  park_threads = p;
  unpark_threads = u;
  park_after_fork_child = c;
  park_begin = reinterpret_cast<VoidFn>(dlsym(h, "mp_park_begin"));
  park_cancel = reinterpret_cast<VoidFn>(dlsym(h, "mp_park_cancel"));
  if (!park_begin || !park_cancel) park_begin = park_cancel = nullptr;
  return Napi::Boolean::New(env, true);
}

// forkSoon() before preparing a fork lets the platform's workers park meanwhile; fork()
// then finds them parked. forkCancelled() if the fork will not happen after all.
Napi::Value ForkSoon(const Napi::CallbackInfo& info) {
  if (park_begin) park_begin();
  return info.Env().Undefined();
}

Napi::Value ForkCancelled(const Napi::CallbackInfo& info) {
  if (park_cancel) park_cancel();
  return info.Env().Undefined();
}

// setSigintIgnored(ignored): the forkserver outlives Ctrl-C, which reaches its whole process
// group (as Python's forkserver ignores SIGINT): its client decides, and the children's
// exit statuses are still reported (a killed server left them unknown: 255).
Napi::Value SetSigintIgnored(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = ArgBool(info, 0, true) ? SIG_IGN : SIG_DFL;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, nullptr) != 0) ThrowErrno(env, errno, "sigaction");
  return env.Undefined();
}

Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  int code = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
  _exit(code & 0xff);
}

// Python's convention: exit code, or -signal when killed.
Napi::Value StatusToCode(Napi::Env env, int status) {
  if (WIFEXITED(status)) return Napi::Number::New(env, WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return Napi::Number::New(env, -WTERMSIG(status));
  return env.Null();
}

// waitpid(pid, block): the child's exit code (reaped), or null if still running.
Napi::Value WaitPid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = ArgInt(info, 0, "pid");
  bool block = ArgBool(info, 1, false);
  int status = 0;
  pid_t r = RetryEintr([&] { return waitpid(pid, &status, block ? 0 : WNOHANG); });
  if (r == 0) return env.Null();
  if (r < 0) ThrowErrno(env, errno, "waitpid");
  return StatusToCode(env, status);
}

// Like WaitPid but leaves the child reapable (for children libuv reaps itself).
Napi::Value WaitPidNoReap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = ArgInt(info, 0, "pid");
  bool block = ArgBool(info, 1, false);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  int r = RetryEintr([&] { return waitid(P_PID, pid, &si, WEXITED | WNOWAIT | (block ? 0 : WNOHANG)); });
  if (r < 0) ThrowErrno(env, errno, "waitid");
  if (si.si_pid == 0) return env.Null();
  if (si.si_code == CLD_EXITED) return Napi::Number::New(env, si.si_status);
  return Napi::Number::New(env, -si.si_status);
}

Napi::Value Kill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t pid = ArgInt(info, 0, "pid");
  int sig = ArgInt(info, 1, "signal");
  if (kill(pid, sig) != 0) {
    if (errno == ESRCH) return Napi::Boolean::New(env, false);
    ThrowErrno(env, errno, "kill");
  }
  return Napi::Boolean::New(env, true);
}

bool OnMainThread() {
#if defined(__linux__)
  return syscall(SYS_gettid) == getpid();
#elif defined(__APPLE__)
  return pthread_main_np() != 0;
#else
  return true;
#endif
}

// environBlock(): the C environment as "K=V\0K=V...", in one call; null off the main
// thread. There process.env reads and writes this very environment, one native call per
// key (a worker thread's process.env is a copy of its own).
Napi::Value EnvironBlock(const Napi::CallbackInfo& info) {
  if (!OnMainThread()) return info.Env().Null();
  std::string block;
  for (char** e = environ; e != nullptr && *e != nullptr; e++) {
    if (e != environ) block.push_back('\0');
    block.append(*e);
  }
  return Napi::String::New(info.Env(), block);
}

Napi::Value GetPid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), getpid()); }
Napi::Value GetPpid(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), getppid()); }

Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int p[2];
#ifdef __linux__
  if (pipe2(p, O_CLOEXEC) != 0) ThrowErrno(env, errno, "pipe2");
#else
  if (pipe(p) != 0) ThrowErrno(env, errno, "pipe");
  SetCloexec(p[0], true);
  SetCloexec(p[1], true);
#endif
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, p[0]));
  a.Set(1u, Napi::Number::New(env, p[1]));
  return a;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  // close() must not be retried on EINTR (the fd is gone either way on Linux).
  if (close(fd) != 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (r < 0) ThrowErrno(info.Env(), errno, "dup");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value Dup2(const Napi::CallbackInfo& info) {
  int from = ArgInt(info, 0, "fd");
  int to = ArgInt(info, 1, "fd");
  if (from == to) {
    if (SetCloexec(to, false) != 0) ThrowErrno(info.Env(), errno, "fcntl");
    return info.Env().Undefined();
  }
  if (RetryEintr([&] { return dup2(from, to); }) < 0) ThrowErrno(info.Env(), errno, "dup2");
  return info.Env().Undefined();
}

Napi::Value SetCloexecJs(const Napi::CallbackInfo& info) {
  if (SetCloexec(ArgInt(info, 0, "fd"), ArgBool(info, 1, true)) != 0) ThrowErrno(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}

Napi::Value FdIsOpen(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), fcntl(ArgInt(info, 0, "fd"), F_GETFD) != -1);
}

// Runs one iteration of the event loop from inside JS: a forked child runs its
// target this way and never returns to the caller's stack (it ends in _exit).
Napi::Value RunLoopOnce(const Napi::CallbackInfo& info) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(info.Env(), &loop);
  int alive = uv_run(loop, UV_RUN_ONCE);
  return Napi::Boolean::New(info.Env(), alive != 0);
}

// Whether anything active and ref'd remains. Unlike uv_loop_alive() this ignores
// handles that are only closing: a forked child has been seen to keep a closing
// handle listed for ever, which would spin its loop.
Napi::Value LoopAlive(const Napi::CallbackInfo& info) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(info.Env(), &loop);
  return Napi::Boolean::New(info.Env(), loop->active_handles > 0 || loop->active_reqs.count > 0);
}

// A thread that kills this process once its parent's lifeline fd reports EOF:
// daemonic children must not outlive a parent that was SIGKILLed.
void* WatchParent(void* arg) {
  int fd = static_cast<int>(reinterpret_cast<intptr_t>(arg));
  char c;
  for (;;) {
    ssize_t n = read(fd, &c, 1);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    if (n < 0 && errno == EAGAIN) {
      struct timespec ts = {0, 50 * 1000 * 1000};
      nanosleep(&ts, nullptr);
    }
  }
  kill(getpid(), SIGKILL);
  return nullptr;
}

Napi::Value WatchParentDeath(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (own < 0) ThrowErrno(info.Env(), errno, "dup");
  SetNonblock(own, false);
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int r = pthread_create(&t, &attr, WatchParent, reinterpret_cast<void*>(static_cast<intptr_t>(own)));
  pthread_attr_destroy(&attr);
  if (r != 0) {
    close(own);
    ThrowErrno(info.Env(), r, "pthread_create");
  }
  return info.Env().Undefined();
}

Napi::Value SetPdeathsig(const Napi::CallbackInfo& info) {
#ifdef __linux__
  if (prctl(PR_SET_PDEATHSIG, ArgInt(info, 0, "signal")) != 0) ThrowErrno(info.Env(), errno, "prctl");
  return Napi::Boolean::New(info.Env(), true);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("fork", Napi::Function::New(env, Fork, "fork"));
  exports.Set("setSigintIgnored", Napi::Function::New(env, SetSigintIgnored, "setSigintIgnored"));
  exports.Set("setParkLibrary", Napi::Function::New(env, SetParkLibrary, "setParkLibrary"));
  exports.Set("restoreDontfork", Napi::Function::New(env, RestoreDontfork, "restoreDontfork"));
  exports.Set("forkSoon", Napi::Function::New(env, ForkSoon, "forkSoon"));
  exports.Set("forkCancelled", Napi::Function::New(env, ForkCancelled, "forkCancelled"));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow, "exitNow"));
  exports.Set("waitpid", Napi::Function::New(env, WaitPid, "waitpid"));
  exports.Set("waitpidNoReap", Napi::Function::New(env, WaitPidNoReap, "waitpidNoReap"));
  exports.Set("kill", Napi::Function::New(env, Kill, "kill"));
  exports.Set("environBlock", Napi::Function::New(env, EnvironBlock, "environBlock"));
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
}

}  // namespace mp
