// Shared helpers of the Windows sources: Win32 errors as JS errors, CRT fds <-> HANDLEs.
//
// CRT fds: Node (and so this addon under MSVC) links the C runtime statically, so
// the addon's own _open_osfhandle/_get_osfhandle would use a private fd table that
// Node's fs, net and child_process never see. All fd <-> HANDLE conversions go
// through libuv's uv_open_osfhandle/uv_get_osfhandle (exported by node.exe), which
// use Node's own table: the fds made here work with fs.readSync, child_process
// stdio, etc., and fds from Node work here.
#pragma once

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif
// winsock2.h before windows.h (uv.h includes it; windows.h must not pull winsock.h).
#include <winsock2.h>
#include <windows.h>
#include <uv.h>

#include <string>

#include "../common.h"

namespace mp {

// A JS Error for a Win32 error, shaped like Node's own system errors on Windows:
//   message "syscall: CODE (ERROR_NAME: system text)",
//   code    the POSIX-style name libuv maps the error to ('ENOENT', 'EEXIST', ...;
//           the Win32 name when libuv has no mapping), so cross-platform checks work,
//   errno   the negative libuv code (as in Node's errors),
//   syscall the Win32 function that failed,
//   winerror / winerrorName  the GetLastError() value and its name ('ERROR_FILE_NOT_FOUND'),
//           as Python's OSError.winerror.
//   uv_code (optional): report this libuv code instead of the one libuv maps err to.
Napi::Error Win32Error(Napi::Env env, DWORD err, const char* syscall, int uv_code = 0);

[[noreturn]] inline void ThrowWin32(Napi::Env env, DWORD err, const char* syscall) {
  throw Win32Error(env, err, syscall);
}

// Name of a Win32 error code ("ERROR_ACCESS_DENIED"), "ERROR_UNKNOWN" if not listed.
const char* Win32ErrorName(DWORD err);

// An Error for a facility that does not exist on Windows: code 'ERR_NOT_SUPPORTED_ON_WINDOWS'.
Napi::Error NotSupportedError(Napi::Env env, const std::string& message);

// A function that always throws NotSupportedError(message).
Napi::Function NotSupportedFunction(Napi::Env env, const char* name, const char* message);

// The HANDLE behind a CRT fd of Node's table; throws EBADF-like errors for bad fds.
HANDLE FdToHandle(Napi::Env env, int fd, const char* syscall);

// Wraps a HANDLE in a new fd of Node's CRT table. On failure closes the handle and throws.
int HandleToFd(Napi::Env env, HANDLE h, const char* syscall);

// Closes an fd of Node's CRT table (and its HANDLE). Returns 0 or a libuv error code.
int CloseFd(Napi::Env env, int fd);

// UTF-8 -> UTF-16 for the W functions; throws on invalid input.
std::wstring Utf8ToWide(Napi::Env env, const std::string& s);

// An Error shaped like a libuv error (code 'EINVAL', errno UV_EINVAL) for a misuse
// that has no Win32 error code: message "syscall: CODE (detail)".
Napi::Error UvError(Napi::Env env, int uv_err, const char* syscall, const std::string& detail);

// Closes a HANDLE when it goes out of scope (for early returns and exceptions).
class ScopedHandle {
 public:
  explicit ScopedHandle(HANDLE h = nullptr) : h_(h) {}
  ~ScopedHandle() {
    if (h_ != nullptr && h_ != INVALID_HANDLE_VALUE) CloseHandle(h_);
  }
  ScopedHandle(const ScopedHandle&) = delete;
  ScopedHandle& operator=(const ScopedHandle&) = delete;
  HANDLE get() const { return h_; }
  HANDLE release() {
    HANDLE h = h_;
    h_ = nullptr;
    return h;
  }
  bool valid() const { return h_ != nullptr && h_ != INVALID_HANDLE_VALUE; }

 private:
  HANDLE h_;
};

// Shared memory "fds" (shared_memory_win.cc). A Windows section is not a file: the
// C runtime refuses to wrap one in an fd, so shmOpen/anonMemoryFile return numbers
// from kShmFdBase up that only this addon understands (close, dup, setCloexec,
// fdIsOpen, fstatSize, ftruncate, mmap accept them).
constexpr int kShmFdBase = 1 << 30;
inline bool IsShmFd(int fd) { return fd >= kShmFdBase; }
bool ShmFdIsOpen(int fd);
void ShmCloseFd(Napi::Env env, int fd);
int ShmDupFd(Napi::Env env, int fd);
void ShmSetInheritable(Napi::Env env, int fd, bool inheritable);

// Named pipe Listener/Client and handle passing (named_pipe_win.cc); InitSocket calls it.
void InitNamedPipe(Napi::Env env, Napi::Object exports);

// The exit code TerminateProcess gives a process "killed by signal sig": CPython
// uses 0x10000 for terminate(); waitpid maps base+sig back to -sig.
constexpr DWORD kTerminateExitBase = 0x10000;

}  // namespace mp
