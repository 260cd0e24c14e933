// Shared helpers for the addon: errno -> JS errors, fd utilities.
#pragma once
#include <napi.h>
#include <uv.h>
#include <cerrno>
#include <cstring>
#include <string>

namespace mp {

// Name of an errno value ("EAGAIN"), as Node's own errors carry in `code`.
const char* ErrnoName(int err);

// A JS Error shaped like Node's system errors: message "syscall: EXXX (text)",
// with `code`, `errno` (negative, as libuv) and `syscall` properties.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall);

[[noreturn]] inline void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  throw ErrnoError(env, err, syscall);
}

// Argument helpers that throw TypeError with a clear message.
int32_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* what);
int64_t ArgInt64(const Napi::CallbackInfo& info, size_t i, const char* what);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, bool dflt);

#ifndef _WIN32
// Retry a syscall while it fails with EINTR.
template <typename F>
inline auto RetryEintr(F f) -> decltype(f()) {
  decltype(f()) r;
  do { r = f(); } while (r == -1 && errno == EINTR);
  return r;
}
int SetCloexec(int fd, bool on);
int SetNonblock(int fd, bool on);
#endif

// Closes a libuv handle while its environment ends (a worker thread, the process): with no
// close callback, since Node may unload this addon before libuv runs one (seen: a worker
// ended with an async read pending crashed in our callback). The handle's few bytes stay
// allocated for the process's life.
inline void CloseHandleAtTeardown(uv_handle_t* handle) { uv_close(handle, nullptr); }

// Each facility registers its functions on the exports object.
void InitProcess(Napi::Env env, Napi::Object exports);
void InitSocket(Napi::Env env, Napi::Object exports);
void InitPoll(Napi::Env env, Napi::Object exports);
// In a forked child, before any JS runs: stops every FdWatcher the parent had (poll.cc).
void StopInheritedWatchers();
void InitSemaphore(Napi::Env env, Napi::Object exports);
void InitSharedMemory(Napi::Env env, Napi::Object exports);

}  // namespace mp
