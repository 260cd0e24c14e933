// fd watching on Windows, with the JS names and signatures of native/poll.cc:
//
//   pollFds(fds, timeoutMs?, events?) -> the fds that are ready
//   new FdWatcher(fd, callback(status, events)); start(events) / stop() / ref() / unref() / close()
//
// libuv's uv_poll watches only sockets on Windows, and the fds here are pipes (the
// byte-mode named pipe pairs of socketpair(), CreatePipe pipes, PipeListener/Client
// ends), all opened for synchronous I/O (no FILE_FLAG_OVERLAPPED): there is no
// kernel object to wait on that becomes signaled when data arrives. So:
//
// Readiness (the same rule for pollFds and FdWatcher)
//  - A pipe is readable when PeekNamedPipe reports bytes available, or fails with
//    ERROR_BROKEN_PIPE / ERROR_PIPE_NOT_CONNECTED / ERROR_NO_DATA: the other end is
//    gone, and EOF counts as ready, as POLLHUP does on POSIX (the watcher reports
//    UV_READABLE | UV_DISCONNECT then). Another PeekNamedPipe failure (e.g.
//    ERROR_ACCESS_DENIED on the write-only end of a CreatePipe pipe) counts as ready
//    for pollFds (as POLLERR does) and is reported by a watcher as an error status.
//    ERROR_PIPE_LISTENING (a server instance nobody connected to yet) is not ready.
//  - Disk files and character devices are always ready (as poll() says of files).
//  - Any other handle (FILE_TYPE_UNKNOWN without an error: a process or thread
//    handle wrapped in an fd) is ready once signaled (WaitForSingleObject); watchers
//    and pollFds wait on it directly, without polling. Process sentinels are not of
//    this kind today: on Windows a Process sentinel is this side of the socketpair()
//    whose other end the child holds as fd 3 (src/popen_spawn.ts), i.e. a pipe that
//    breaks (EOF) when the child ends.
//  - Writable (UV_WRITABLE, pollFds events 2): pipes and files are always reported
//    writable. Windows cannot tell how much room a synchronous pipe has (a write to
//    a PIPE_NOWAIT pipe that is full returns 0 bytes, and write() says so).
//  - Negative fds are ignored by pollFds (as poll() does); an fd that is not open is
//    reported ready (as POLLNVAL is). The shared memory numbers of
//    shared_memory_win.cc count as files.
//
// pollFds waits by checking, then sleeping 0 (yield), 1, 2, 4, 8, 16, 16... ms
// (sleeps end early when a waitable handle among the fds is signaled), until
// something is ready or the timeout passes. timeoutMs < 0, null or missing waits
// for ever, 0 checks once. (native/poll.cc maps a negative number to 0; here a
// negative number waits for ever, as src/util.ts's pollTimeout() means it.)
//
// FdWatcher threading design
//  - Each watcher has a uv_async_t on Node's loop and, while started, one waiter
//    thread of its own. The thread only ever calls Win32 functions and
//    uv_async_send(): it never touches V8 or N-API. The async callback, on the JS
//    thread, calls the JS callback through napi_make_callback(status, events).
//  - Waiting for a pipe polls PeekNamedPipe with a short backoff (a few yields, then
//    0.25, 0.5, 1 ms; the cap grows to 4 ms after 1 s without data and 15 ms after
//    10 s, so that a watcher idle for long - a Process sentinel, say - costs next to
//    nothing). The sleeps use a high-resolution waitable timer where Windows has one
//    (10 1803 and later; elsewhere the waits round up to the system tick), and end at
//    once when stop()/close()/start() signals the watcher's wake event.
//    Why not a blocking zero-byte ReadFile in the thread, cancelled by
//    CancelSynchronousIo: the handles are synchronous, and Windows serializes all
//    I/O on a synchronous file object. A read pending in the watcher thread would
//    block every WriteFile the JS thread makes on the same duplex pipe end (a
//    Connection sends and receives on one fd; the watcher's duplicate shares the file
//    object) until data arrived: a request/response exchange would deadlock. A
//    PeekNamedPipe never waits for data, so it holds that lock only for an instant.
//  - Level-triggered like uv_poll, without busy-looping: after posting a report the
//    thread waits until the JS callback has run, then checks again at once (the
//    callback has read, or the fd is still ready and is reported again, as uv_poll
//    does). Readiness that says nothing about the fd (writable, files) is re-reported
//    with a backoff (1, 2, 4, 8, 16 ms), since nothing tells when it changes. A pipe
//    report is checked again (one PeekNamedPipe) on the JS thread just before the
//    callback and dropped if the JS side has read the data meanwhile, so that a
//    report is never stale (uv_poll looks when the loop polls).
//  - State shared by the JS object, its uv_async_t and the thread lives in a
//    reference-counted WatchShared (the thread holds one reference, the async handle
//    another until its uv_close callback). The thread calls uv_async_send only under
//    the state lock and only while `closed` is false; close() sets `closed` under
//    that lock before uv_close(), so a report can never reach a closed or freed
//    handle, and collecting the JS object while a thread runs frees nothing the
//    thread uses.
//  - The watcher watches its own duplicate of the fd's HANDLE, so closing the fd
//    (src/ closes watched dups right after close()) cannot make the thread peek at a
//    recycled handle value. close() closes a pipe duplicate at once, under a lock the
//    thread holds while it peeks (a peer must see EOF as soon as our fds are
//    closed, even if the JS thread then blocks in a synchronous read without turning
//    the loop, which a deferred close would need); a waitable
//    duplicate, which the thread may be waiting on, is closed when the last
//    reference goes.
//  - stop() (and close()) end the thread's waiting at once; a stopped thread stays
//    for 2 s in case start() follows (a Connection starts and stops its watcher for
//    every read that has to wait), then ends. close() ends it at once.
//  - start() holds a reference to the JS object (Ref()) until stop()/close(), as on
//    POSIX. The uv_async_t keeps the loop alive only while started and ref()'d
//    (uv_async handles are active from init to close: they are unref()'d otherwise).
//    An error while waiting (status < 0, events 0, as libuv reports POLLERR) stops
//    the watcher before the callback runs.
//  - An env cleanup hook closes the watcher when a Worker's environment (or the
//    main one) is torn down, so no thread posts to a loop that is gone.
#include "win_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#ifndef CREATE_WAITABLE_TIMER_HIGH_RESOLUTION
#define CREATE_WAITABLE_TIMER_HIGH_RESOLUTION 0x00000002
#endif

namespace mp {
namespace {

constexpr DWORD kThreadStack = 64 * 1024;
constexpr DWORD kIdleThreadMs = 2000;  // a stopped watcher's thread ends after this long
constexpr int kKnownEvents = UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED;

// ---------------------------------------------------------------------------
// Readiness

enum class Kind {
  kPipe,      // PeekNamedPipe
  kAlways,    // files, character devices, shared memory numbers: always ready
  kWaitable,  // another kernel object: ready once signaled
  kInvalid,   // not an open fd (pollFds only): ready, as POLLNVAL
};

// Kind of an open HANDLE; sets *err (and returns kInvalid) when GetFileType fails.
Kind KindOf(HANDLE h, DWORD* err) {
  SetLastError(NO_ERROR);
  DWORD type = GetFileType(h);
  if (type == FILE_TYPE_PIPE) return Kind::kPipe;
  if (type != FILE_TYPE_UNKNOWN) return Kind::kAlways;
  DWORD e = GetLastError();
  if (e != NO_ERROR) {
    *err = e;
    return Kind::kInvalid;
  }
  return Kind::kWaitable;
}

enum class PipeState { kEmpty, kData, kEof, kError };

// What a read on the pipe would find now; *err is set for kError.
PipeState PeekPipe(HANDLE h, DWORD* err) {
  DWORD avail = 0;
  if (PeekNamedPipe(h, nullptr, 0, nullptr, &avail, nullptr)) return avail > 0 ? PipeState::kData : PipeState::kEmpty;
  DWORD e = GetLastError();
  if (e == ERROR_BROKEN_PIPE || e == ERROR_PIPE_NOT_CONNECTED || e == ERROR_NO_DATA) return PipeState::kEof;
  if (e == ERROR_PIPE_LISTENING) return PipeState::kEmpty;  // a server instance not connected yet
  *err = e;
  return PipeState::kError;
}

// Sleeps for a while unless one of a few handles is signaled first. Uses a
// high-resolution waitable timer when Windows has one (the timeout of a plain wait
// rounds up to the system tick, 15.6 ms by default). One Napper per thread.
class Napper {
 public:
  Napper() = default;
  ~Napper() {
    if (timer_ != nullptr) ::CloseHandle(timer_);
  }
  Napper(const Napper&) = delete;
  Napper& operator=(const Napper&) = delete;

  // Waits up to `us` microseconds (INFINITE: no limit) or until one of handles[0, n)
  // is signaled (n < MAXIMUM_WAIT_OBJECTS). Returns as WaitForMultipleObjects does:
  // WAIT_OBJECT_0 + i, WAIT_ABANDONED_0 + i, WAIT_TIMEOUT once the time is up, or
  // WAIT_FAILED (GetLastError() tells why).
  DWORD Wait(const HANDLE* handles, DWORD n, DWORD us) {
    if (us == 0) {  // a yield, then one look at the handles
      SwitchToThread();
      return n > 0 ? WaitForMultipleObjects(n, handles, FALSE, 0) : WAIT_TIMEOUT;
    }
    if (us != INFINITE && Timer() != nullptr) {
      LARGE_INTEGER due;
      due.QuadPart = -static_cast<LONGLONG>(us) * 10;  // relative, in 100 ns units
      if (SetWaitableTimer(timer_, &due, 0, nullptr, nullptr, FALSE)) {
        HANDLE all[MAXIMUM_WAIT_OBJECTS];
        std::copy(handles, handles + n, all);
        all[n] = timer_;
        DWORD r = WaitForMultipleObjects(n + 1, all, FALSE, INFINITE);
        if (r == WAIT_OBJECT_0 + n) return WAIT_TIMEOUT;
        if (r == WAIT_FAILED) {
          DWORD e = GetLastError();
          CancelWaitableTimer(timer_);
          SetLastError(e);
          return r;
        }
        CancelWaitableTimer(timer_);  // woken early: the timer must not fire into the next wait
        return r;
      }
      // SetWaitableTimer failed (should not happen): fall back to a plain wait.
    }
    DWORD ms = us == INFINITE ? INFINITE : static_cast<DWORD>((static_cast<ULONGLONG>(us) + 999) / 1000);
    if (n == 0) {
      Sleep(ms);
      return WAIT_TIMEOUT;
    }
    return WaitForMultipleObjects(n, handles, FALSE, ms);
  }

 private:
  HANDLE Timer() {
    if (!tried_) {
      tried_ = true;
      // Fails with ERROR_INVALID_PARAMETER before Windows 10 1803: plain waits then.
      timer_ = CreateWaitableTimerExW(nullptr, nullptr, CREATE_WAITABLE_TIMER_HIGH_RESOLUTION, TIMER_ALL_ACCESS);
    }
    return timer_;
  }

  HANDLE timer_ = nullptr;
  bool tried_ = false;
};

// ---------------------------------------------------------------------------
// pollFds

struct PollEntry {
  int fd;
  Kind kind;
  HANDLE h;  // borrowed from the fd (open for the whole synchronous call)
};

// True when e is ready for reading now (see the rules at the top).
bool ReadyToRead(const PollEntry& e) {
  switch (e.kind) {
    case Kind::kAlways:
    case Kind::kInvalid:
      return true;
    case Kind::kPipe: {
      DWORD err = 0;
      return PeekPipe(e.h, &err) != PipeState::kEmpty;  // data, EOF, or an error to read
    }
    case Kind::kWaitable:
      return WaitForSingleObject(e.h, 0) != WAIT_TIMEOUT;  // signaled, abandoned, or failing: POLLERR
  }
  return true;
}

// pollFds(fds, timeoutMs?, events?): the fds (in the order given) ready for reading
// (data or EOF), or for writing with events = 2 (UV_WRITABLE / POLLOUT).
Napi::Value PollFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  int64_t timeout = -1;  // ms; < 0: for ever
  if (info.Length() > 1 && info[1].IsNumber()) {
    double t = info[1].As<Napi::Number>().DoubleValue();
    if (std::isnan(t)) timeout = 0;
    else if (t < 0 || t > 2147483647.0) timeout = -1;
    else timeout = static_cast<int64_t>(std::ceil(t));
  }
  bool writable = info.Length() > 2 && info[2].IsNumber() && info[2].As<Napi::Number>().Int32Value() == 2;

  std::vector<PollEntry> entries;
  entries.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber()) throw Napi::TypeError::New(env, "fds must be numbers");
    int fd = v.As<Napi::Number>().Int32Value();
    if (fd < 0) continue;  // ignored, as poll() ignores negative fds
    PollEntry e{fd, Kind::kInvalid, nullptr};
    if (IsShmFd(fd)) {
      e.kind = ShmFdIsOpen(fd) ? Kind::kAlways : Kind::kInvalid;
    } else {
      HANDLE h = uv_get_osfhandle(fd);
      if (h != INVALID_HANDLE_VALUE && h != nullptr) {
        DWORD err = 0;
        e.kind = KindOf(h, &err);
        e.h = h;
      }
    }
    entries.push_back(e);
  }

  auto result = [&](const std::vector<bool>& ready) {
    Napi::Array out = Napi::Array::New(env);
    uint32_t k = 0;
    for (size_t i = 0; i < entries.size(); i++)
      if (ready[i]) out.Set(k++, Napi::Number::New(env, entries[i].fd));
    return out;
  };

  std::vector<bool> ready(entries.size(), false);
  if (writable) {
    // Pipes and files are always writable as far as Windows can tell (see the top).
    std::fill(ready.begin(), ready.end(), true);
    return result(ready);
  }

  // Waitable handles end a sleep early (at most MAXIMUM_WAIT_OBJECTS - 1 of them, one
  // slot being the timer's; any others are checked between sleeps).
  std::vector<HANDLE> waitables;
  bool polled = false;  // whether something needs polling (otherwise the waits need no backoff)
  for (const PollEntry& e : entries) {
    if (e.kind == Kind::kPipe) polled = true;
    if (e.kind != Kind::kWaitable) continue;
    if (waitables.size() < MAXIMUM_WAIT_OBJECTS - 1) waitables.push_back(e.h);
    else polled = true;
  }

  Napper napper;
  const ULONGLONG start = GetTickCount64();
  DWORD delay_ms = 0;
  for (int pass = 0;; pass++) {
    bool any = false;
    for (size_t i = 0; i < entries.size(); i++) {
      ready[i] = ReadyToRead(entries[i]);
      any = any || ready[i];
    }
    if (any || timeout == 0) return result(ready);
    DWORD wait_us = INFINITE;
    if (polled) {
      delay_ms = pass == 0 ? 0 : std::min<DWORD>(delay_ms == 0 ? 1 : delay_ms * 2, 16);  // 0, 1, 2, 4, 8, 16 ms
      wait_us = delay_ms * 1000;
    }
    if (timeout > 0) {
      ULONGLONG elapsed = GetTickCount64() - start;
      if (elapsed >= static_cast<ULONGLONG>(timeout)) return result(ready);
      ULONGLONG left_us = std::min<ULONGLONG>((static_cast<ULONGLONG>(timeout) - elapsed) * 1000, INFINITE - 1);
      if (wait_us == INFINITE || left_us < wait_us) wait_us = static_cast<DWORD>(left_us);
    }
    DWORD r = napper.Wait(waitables.data(), static_cast<DWORD>(waitables.size()), wait_us);
    if (r == WAIT_FAILED) ThrowWin32(env, GetLastError(), "WaitForMultipleObjects");
  }
}

// ---------------------------------------------------------------------------
// FdWatcher

class FdWatcher;

// Shared by the JS object, its uv_async_t and its thread (see the top).
struct WatchShared {
  WatchShared() {
    InitializeSRWLock(&lock);
    InitializeSRWLock(&io_lock);
  }
  ~WatchShared() {
    if (handle != nullptr) ::CloseHandle(handle);
    if (wake != nullptr) ::CloseHandle(wake);
  }
  WatchShared(const WatchShared&) = delete;
  WatchShared& operator=(const WatchShared&) = delete;

  // Set before the thread or the async handle exist, then fixed.
  Kind kind = Kind::kAlways;
  HANDLE wake = nullptr;  // auto-reset event: state changed, look again
  uv_async_t async{};

  // The watched HANDLE (our duplicate; null for shared memory numbers). Pipes: the
  // thread peeks under io_lock, close() closes it under io_lock. Waitables: closed
  // by the destructor only (the thread may be waiting on it).
  SRWLOCK io_lock;
  HANDLE handle = nullptr;

  // Guarded by `lock`.
  SRWLOCK lock;
  bool started = false;       // the JS side wants reports
  bool closed = false;        // the async handle is closing: never uv_async_send again
  bool thread_alive = false;  // a waiter thread exists (or is being created)
  bool pending = false;       // a report was posted and its callback has not finished
  int events = 0;             // what start() asked for
  uint64_t generation = 0;    // bumped by every start()/stop(): older reports are dropped
  int report_status = 0;
  int report_events = 0;

  // JS thread only.
  FdWatcher* owner = nullptr;
};

class Locked {
 public:
  explicit Locked(SRWLOCK* l) : l_(l) { AcquireSRWLockExclusive(l_); }
  ~Locked() { ReleaseSRWLockExclusive(l_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  SRWLOCK* l_;
};

// One look at the watched object for the requested events. Returns true when there is
// something to report: *status 0 and *out the events, or *status < 0 (a libuv error
// code) and *out 0. *evidence is false for readiness that says nothing about the
// object (writable, files), which is re-reported with a backoff.
bool Check(WatchShared* s, int events, int* status, int* out, bool* evidence) {
  *status = 0;
  *out = 0;
  *evidence = false;
  const int wants_read = events & (UV_READABLE | UV_DISCONNECT);
  if (s->kind == Kind::kPipe && wants_read) {
    DWORD err = 0;
    PipeState st;
    {
      Locked io(&s->io_lock);
      if (s->handle == nullptr) return false;  // closed under us: close() ends the thread
      st = PeekPipe(s->handle, &err);
    }
    if (st == PipeState::kError) {
      *status = uv_translate_sys_error(static_cast<int>(err));
      if (*status >= 0) *status = UV_EIO;
      return true;
    }
    if (st == PipeState::kData) *out |= events & UV_READABLE;
    if (st == PipeState::kEof) *out |= events & (UV_READABLE | UV_DISCONNECT);
    *evidence = *out != 0;
  } else if (s->kind == Kind::kWaitable && wants_read) {
    DWORD w = WaitForSingleObject(s->handle, 0);
    if (w == WAIT_FAILED) {
      *status = uv_translate_sys_error(static_cast<int>(GetLastError()));
      if (*status >= 0) *status = UV_EIO;
      return true;
    }
    if (w != WAIT_TIMEOUT) {
      *out |= events & (UV_READABLE | UV_DISCONNECT);
      *evidence = true;
    }
  } else if (s->kind == Kind::kAlways) {
    *out |= events & UV_READABLE;
  }
  *out |= events & UV_WRITABLE;
  return *out != 0;
}

// The microseconds to sleep before the next look at an empty pipe, after `checks`
// looks and `waited_ms` of waiting (see the top).
DWORD PipeBackoffUs(int checks, ULONGLONG waited_ms) {
  if (checks < 3) return 0;  // yield
  if (checks == 3) return 250;
  if (checks == 4) return 500;
  if (waited_ms < 1000) return 1000;
  if (waited_ms < 10000) return 4000;
  return 15000;
}

// The waiter thread of one watcher (see the top). Win32 and uv_async_send only.
void RunWatcher(WatchShared* s) {
  Napper napper;
  uint64_t gen = 0;           // the generation being served
  int checks = 0;             // looks at the object since this generation began (or a report)
  ULONGLONG wait_start = 0;   // when this wait began
  int repeats = 0;            // reports in a row without evidence (writable, files)
  for (;;) {
    int events = 0;
    bool idle = false;
    bool wait_report = false;
    {
      Locked l(&s->lock);
      if (s->closed) {
        s->thread_alive = false;
        return;
      }
      if (!s->started) {
        idle = true;
      } else if (s->pending) {
        wait_report = true;
      } else {
        events = s->events;
        if (s->generation != gen) {
          gen = s->generation;
          checks = 0;
          repeats = 0;
          wait_start = GetTickCount64();
        }
      }
    }
    if (idle) {
      DWORD w = WaitForSingleObject(s->wake, kIdleThreadMs);
      if (w == WAIT_TIMEOUT || w == WAIT_FAILED) {
        Locked l(&s->lock);
        if (!s->started || s->closed) {
          s->thread_alive = false;  // start() makes a new thread
          return;
        }
        if (w == WAIT_FAILED) Sleep(1);  // cannot wait on our own event (should not happen): do not spin
      }
      continue;
    }
    if (wait_report) {
      // The async callback (or stop/start/close) signals when the JS side is done.
      if (WaitForSingleObject(s->wake, INFINITE) == WAIT_FAILED) Sleep(1);
      continue;
    }

    int status = 0;
    int out = 0;
    bool evidence = false;
    bool report = Check(s, events, &status, &out, &evidence);
    checks++;
    if (report && !evidence && repeats > 0) {
      // Writable or a file again, right after such a report: back off (1 .. 16 ms)
      // before telling the JS side the same thing.
      DWORD us = static_cast<DWORD>(std::min(16, 1 << std::min(repeats - 1, 4))) * 1000;
      if (napper.Wait(&s->wake, 1, us) == WAIT_OBJECT_0) {
        Locked l(&s->lock);  // woken by start/stop/close: look at the state first
        if (s->closed || !s->started || s->generation != gen) continue;
      }
    }
    if (report) {
      Locked l(&s->lock);
      if (s->closed || !s->started || s->pending || s->generation != gen) continue;
      s->report_status = status;
      s->report_events = out;
      s->pending = true;
      if (status < 0) s->started = false;  // as libuv stops a poll handle on POLLERR
      if (uv_async_send(&s->async) != 0) s->pending = false;  // cannot fail on Windows
      repeats = evidence ? 0 : repeats + 1;
      checks = 0;
      wait_start = GetTickCount64();
      continue;
    }

    // Nothing yet: sleep (woken early by the wake event or a signaled waitable).
    HANDLE hs[2] = {s->wake, s->kind == Kind::kWaitable ? s->handle : nullptr};
    DWORD n = hs[1] != nullptr ? 2 : 1;
    DWORD us = s->kind == Kind::kPipe && (events & (UV_READABLE | UV_DISCONNECT))
                   ? PipeBackoffUs(checks, GetTickCount64() - wait_start)
                   : INFINITE;  // a waitable wakes us itself; files and writes were reported
    if (napper.Wait(hs, n, us) == WAIT_FAILED) {
      int st = uv_translate_sys_error(static_cast<int>(GetLastError()));
      Locked l(&s->lock);
      if (s->closed || !s->started || s->pending || s->generation != gen) continue;
      s->report_status = st < 0 ? st : UV_EIO;
      s->report_events = 0;
      s->pending = true;
      s->started = false;
      if (uv_async_send(&s->async) != 0) s->pending = false;
    }
  }
}

DWORD WINAPI WatchThread(LPVOID arg) {
  std::unique_ptr<std::shared_ptr<WatchShared>> holder(static_cast<std::shared_ptr<WatchShared>*>(arg));
  std::shared_ptr<WatchShared> s = *holder;
  holder.reset();
  RunWatcher(s.get());
  return 0;
}

// new FdWatcher(fd, callback(status, events)); start(events) / stop() / ref() / unref() / close().
// events: 1 = readable, 2 = writable, 4 = disconnect (UV_READABLE, UV_WRITABLE, UV_DISCONNECT).
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {InstanceMethod("start", &FdWatcher::Start), InstanceMethod("stop", &FdWatcher::Stop),
                        InstanceMethod("ref", &FdWatcher::RefHandle), InstanceMethod("unref", &FdWatcher::UnrefHandle),
                        InstanceMethod("close", &FdWatcher::Close)});
  }

  FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    int fd = ArgInt(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    auto s = std::make_shared<WatchShared>();
    if (IsShmFd(fd)) {
      if (!ShmFdIsOpen(fd)) ThrowWin32(env, ERROR_INVALID_HANDLE, "FdWatcher");
      s->kind = Kind::kAlways;
    } else {
      HANDLE h = FdToHandle(env, fd, "FdWatcher");
      DWORD err = 0;
      s->kind = KindOf(h, &err);
      if (s->kind == Kind::kInvalid) ThrowWin32(env, err, "GetFileType");
      // Our own duplicate: the fd may be closed while the thread still looks at it.
      if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), &s->handle, 0, FALSE, DUPLICATE_SAME_ACCESS)) {
        s->handle = nullptr;
        ThrowWin32(env, GetLastError(), "DuplicateHandle");
      }
    }
    s->wake = CreateEventW(nullptr, FALSE, FALSE, nullptr);
    if (s->wake == nullptr) ThrowWin32(env, GetLastError(), "CreateEventW");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr)
      throw Napi::Error::New(env, "FdWatcher: cannot get the event loop");
    // Added before the async handle, and removed again if that fails: a constructor
    // that throws never runs the destructor.
    if (napi_add_env_cleanup_hook(env, CleanupHook, this) != napi_ok)
      throw Napi::Error::New(env, "FdWatcher: napi_add_env_cleanup_hook failed");
    int r = uv_async_init(loop, &s->async, OnAsync);
    if (r != 0) {
      napi_remove_env_cleanup_hook(env, CleanupHook, this);
      throw UvError(env, r, "uv_async_init", uv_strerror(r));
    }
    // The async handle holds a reference until its close callback.
    s->async.data = new std::shared_ptr<WatchShared>(s);
    uv_unref(reinterpret_cast<uv_handle_t*>(&s->async));  // not started yet
    s->owner = this;
    env_ = env;
    hook_ = true;
    shared_ = std::move(s);
  }

  ~FdWatcher() override {
    Shutdown();
    if (hook_) napi_remove_env_cleanup_hook(env_, CleanupHook, this);
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!shared_) throw Napi::Error::New(env, "FdWatcher is closed");
    int events = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : UV_READABLE;
    if ((events & ~kKnownEvents) != 0) throw UvError(env, UV_EINVAL, "uv_poll_start", "unknown event flags");
    WatchShared* s = shared_.get();
    bool spawn = false;
    {
      Locked l(&s->lock);
      s->events = events;
      s->started = true;
      s->pending = false;  // a report for earlier events is dropped (generation)
      s->generation++;
      if (!s->thread_alive) spawn = s->thread_alive = true;
    }
    if (spawn) {
      auto* holder = new std::shared_ptr<WatchShared>(shared_);
      HANDLE t = CreateThread(nullptr, kThreadStack, WatchThread, holder, STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
      if (t == nullptr) {
        DWORD e = GetLastError();
        delete holder;
        {
          Locked l(&s->lock);
          s->thread_alive = false;
          s->started = false;
          s->generation++;
        }
        ThrowWin32(env, e, "CreateThread");
      }
      ::CloseHandle(t);  // detached: the thread holds its own reference to the state
    } else if (!SetEvent(s->wake)) {
      ThrowWin32(env, GetLastError(), "SetEvent");
    }
    if (!active_) {
      active_ = true;
      Ref();  // keep the JS object alive while the loop may call back into it
    }
    UpdateLoopRef();
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopWatching();
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    user_ref_ = true;
    UpdateLoopRef();
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    user_ref_ = false;
    UpdateLoopRef();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopWatching();
    Shutdown();
    return info.Env().Undefined();
  }

  // The async handle keeps the loop alive only while started and ref()'d, as an
  // active uv_poll handle does.
  void UpdateLoopRef() {
    if (!shared_) return;
    auto* h = reinterpret_cast<uv_handle_t*>(&shared_->async);
    if (active_ && user_ref_) uv_ref(h);
    else uv_unref(h);
  }

  // stop(): no more reports (one already posted is dropped); the thread goes idle.
  void StopWatching() {
    if (shared_) {
      WatchShared* s = shared_.get();
      {
        Locked l(&s->lock);
        s->started = false;
        s->pending = false;
        s->generation++;
      }
      SetEvent(s->wake);  // only hurries the thread to idle: nothing to do if it failed
    }
    if (active_) {
      active_ = false;
      UpdateLoopRef();
      Unref();
    }
  }

  // Ends the thread and closes the async handle. Uses no JS (runs from the destructor
  // and the env cleanup hook). At teardown the handle closes without a callback
  // (CloseHandleAtTeardown: the addon may be unloaded before libuv would run it).
  void Shutdown(bool at_teardown = false) {
    if (!shared_) return;
    std::shared_ptr<WatchShared> s = std::move(shared_);
    {
      Locked l(&s->lock);
      s->closed = true;
      s->started = false;
      s->pending = false;
    }
    SetEvent(s->wake);  // the thread ends once it looks (it also checks between sleeps)
    s->owner = nullptr;
    if (s->kind == Kind::kPipe) {
      // Closed now, not when the thread lets go: the peer must see EOF once our fds are closed.
      Locked io(&s->io_lock);
      if (s->handle != nullptr) ::CloseHandle(s->handle);
      s->handle = nullptr;
    }
    if (at_teardown) {
      CloseHandleAtTeardown(reinterpret_cast<uv_handle_t*>(&s->async));  // the holder stays: the handle lives in it
      return;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&s->async), [](uv_handle_t* h) {
      delete static_cast<std::shared_ptr<WatchShared>*>(h->data);
    });
  }

  static void CleanupHook(void* arg) {
    auto* self = static_cast<FdWatcher*>(arg);
    self->hook_ = false;
    self->Shutdown(true);
  }

  // On the JS thread, once the waiter thread posted a report.
  static void OnAsync(uv_async_t* handle) {
    std::shared_ptr<WatchShared> s = *static_cast<std::shared_ptr<WatchShared>*>(handle->data);
    int status = 0;
    int events = 0;
    int wanted = 0;
    uint64_t gen = 0;
    {
      Locked l(&s->lock);
      if (s->closed || !s->pending) return;
      status = s->report_status;
      events = s->report_events;
      wanted = s->events;
      gen = s->generation;
    }
    FdWatcher* self = s->owner;
    if (self == nullptr) return;
    if (status == 0 && s->kind == Kind::kPipe && (events & (UV_READABLE | UV_DISCONNECT)) != 0 &&
        !StillReadable(s.get(), wanted, &events)) {
      // The thread saw data that the JS side has read since: not readable any more.
      // Drop the report (uv_poll, which looks when the loop polls, would not make it)
      // and let the thread look again.
      {
        Locked l(&s->lock);
        if (!s->closed && s->pending && s->generation == gen) s->pending = false;
      }
      SetEvent(s->wake);
      return;
    }
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    Napi::Object recv = self->Value();  // keeps the object alive through the callback
    if (recv.IsEmpty()) return;         // collected (never while started: start() holds a Ref)
    if (status < 0) self->StopWatching();  // the thread stopped already (libuv's POLLERR)
    // napi_make_callback runs nextTicks and microtasks afterwards, like any Node
    // callback. Called without node-addon-api's wrapper, which would turn a failure
    // into a C++ exception, or abort while a Worker is being terminated (building
    // the Error object fails then).
    napi_value argv[2] = {Napi::Number::New(env, status), Napi::Number::New(env, events)};
    napi_value fn = self->callback_.Value();
    napi_value result = nullptr;
    if (napi_make_callback(env, nullptr, recv, fn, 2, argv, &result) != napi_ok) {
      // Thrown by the JS callback: an uncaught exception, as in any I/O callback
      // (napi_fatal_exception does nothing once the environment cannot run JS).
      bool pending = false;
      napi_value exc = nullptr;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
          napi_get_and_clear_last_exception(env, &exc) == napi_ok && exc != nullptr) {
        napi_fatal_exception(env, exc);
      }
    }
    // The JS side has read (or not): let the thread look again.
    bool wake = false;
    {
      Locked l(&s->lock);
      if (!s->closed && s->pending && s->generation == gen) {
        s->pending = false;
        wake = true;
      }
    }
    if (wake) SetEvent(s->wake);  // nothing to do if it failed: the thread then waits for stop/close
  }

  // The readable part of a pipe report, looked at again on the JS thread just
  // before the callback: false (and nothing to report) when the data the thread saw
  // is gone; otherwise *events is brought up to date (data may have become EOF).
  static bool StillReadable(WatchShared* s, int wanted, int* events) {
    DWORD err = 0;
    PipeState st;
    {
      Locked io(&s->io_lock);
      if (s->handle == nullptr) return false;
      st = PeekPipe(s->handle, &err);
    }
    int readable = 0;
    if (st == PipeState::kData || st == PipeState::kError) readable = wanted & UV_READABLE;
    if (st == PipeState::kEof) readable = wanted & (UV_READABLE | UV_DISCONNECT);
    *events = (*events & UV_WRITABLE) | readable;
    return *events != 0;
  }

  std::shared_ptr<WatchShared> shared_;  // null once closed
  bool active_ = false;                  // started: Ref() held
  bool user_ref_ = true;                 // ref()/unref()
  bool hook_ = false;                    // the env cleanup hook is registered
  Napi::FunctionReference callback_;
  Napi::Env env_ = nullptr;
};

}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports) {
  exports.Set("FdWatcher", FdWatcher::Define(env));
  exports.Set("pollFds", Napi::Function::New(env, PollFds, "pollFds"));
}

}  // namespace mp
