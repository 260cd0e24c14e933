// Windows helpers: Win32 errors as JS errors, fds of Node's CRT table <-> HANDLEs.
#include "win_util.h"

namespace mp {

const char* Win32ErrorName(DWORD err) {
  switch (err) {
#define E(x) case x: return #x;
    E(ERROR_SUCCESS) E(ERROR_INVALID_FUNCTION) E(ERROR_FILE_NOT_FOUND) E(ERROR_PATH_NOT_FOUND)
    E(ERROR_TOO_MANY_OPEN_FILES) E(ERROR_ACCESS_DENIED) E(ERROR_INVALID_HANDLE) E(ERROR_NOT_ENOUGH_MEMORY)
    E(ERROR_INVALID_ACCESS) E(ERROR_OUTOFMEMORY) E(ERROR_NOT_READY) E(ERROR_BAD_LENGTH)
    E(ERROR_WRITE_FAULT) E(ERROR_READ_FAULT) E(ERROR_GEN_FAILURE) E(ERROR_SHARING_VIOLATION)
    E(ERROR_LOCK_VIOLATION) E(ERROR_HANDLE_EOF) E(ERROR_HANDLE_DISK_FULL) E(ERROR_NOT_SUPPORTED)
    E(ERROR_FILE_EXISTS) E(ERROR_INVALID_PARAMETER) E(ERROR_BROKEN_PIPE) E(ERROR_DISK_FULL)
    E(ERROR_CALL_NOT_IMPLEMENTED) E(ERROR_SEM_TIMEOUT) E(ERROR_INSUFFICIENT_BUFFER) E(ERROR_INVALID_NAME)
    E(ERROR_MOD_NOT_FOUND) E(ERROR_PROC_NOT_FOUND) E(ERROR_MAX_THRDS_REACHED) E(ERROR_BUSY)
    E(ERROR_ALREADY_EXISTS) E(ERROR_FILENAME_EXCED_RANGE) E(ERROR_BAD_PIPE) E(ERROR_PIPE_BUSY)
    E(ERROR_NO_DATA) E(ERROR_PIPE_NOT_CONNECTED) E(ERROR_MORE_DATA) E(WAIT_TIMEOUT)
    E(ERROR_NOT_OWNER) E(ERROR_TOO_MANY_POSTS) E(ERROR_PARTIAL_COPY) E(ERROR_INVALID_ADDRESS)
    E(ERROR_PIPE_CONNECTED) E(ERROR_PIPE_LISTENING)
    E(ERROR_OPERATION_ABORTED) E(ERROR_IO_PENDING) E(ERROR_NOACCESS) E(ERROR_INVALID_FLAGS)
    E(ERROR_PROCESS_ABORTED) E(ERROR_MAPPED_ALIGNMENT) E(ERROR_USER_MAPPED_FILE)
    E(ERROR_PRIVILEGE_NOT_HELD) E(ERROR_NO_SYSTEM_RESOURCES) E(ERROR_WORKING_SET_QUOTA)
    E(ERROR_PAGEFILE_QUOTA) E(ERROR_COMMITMENT_LIMIT) E(ERROR_TIMEOUT) E(ERROR_INVALID_USER_BUFFER)
    E(ERROR_NOT_ENOUGH_QUOTA)
#undef E
    default: return "ERROR_UNKNOWN";
  }
}

namespace {

// The system's text for err, in UTF-8, without the trailing newline.
std::string SystemMessage(DWORD err) {
  wchar_t* wbuf = nullptr;
  DWORD n = FormatMessageW(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
                           nullptr, err, 0, reinterpret_cast<wchar_t*>(&wbuf), 0, nullptr);
  std::string out;
  if (n != 0 && wbuf != nullptr) {
    while (n > 0 && (wbuf[n - 1] == L'\r' || wbuf[n - 1] == L'\n' || wbuf[n - 1] == L' ')) n--;
    int len = WideCharToMultiByte(CP_UTF8, 0, wbuf, static_cast<int>(n), nullptr, 0, nullptr, nullptr);
    if (len > 0) {
      out.resize(static_cast<size_t>(len));
      WideCharToMultiByte(CP_UTF8, 0, wbuf, static_cast<int>(n), &out[0], len, nullptr, nullptr);
    }
  }
  if (wbuf != nullptr) LocalFree(wbuf);
  if (out.empty()) out = "Win32 error " + std::to_string(err);
  return out;
}

}  // namespace

Napi::Error Win32Error(Napi::Env env, DWORD err, const char* syscall, int uv_code) {
  const char* win_name = Win32ErrorName(err);
  int uv_err = uv_code < 0 ? uv_code : uv_translate_sys_error(static_cast<int>(err));
  // uv_err_name allocates (and leaks) a string for codes it does not know: only ask
  // for the ones libuv mapped.
  bool mapped = err != 0 && uv_err < 0 && uv_err != UV_UNKNOWN;
  std::string code = mapped ? uv_err_name(uv_err) : win_name;
  std::string msg = std::string(syscall) + ": " + code + " (" + win_name + " " + std::to_string(err) + ": " +
                    SystemMessage(err) + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, mapped ? uv_err : -static_cast<double>(err)));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.Set("winerror", Napi::Number::New(env, static_cast<double>(err)));
  e.Set("winerrorName", Napi::String::New(env, win_name));
  return e;
}

Napi::Error UvError(Napi::Env env, int uv_err, const char* syscall, const std::string& detail) {
  const char* code = uv_err_name(uv_err);
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + code + " (" + detail + ")");
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, uv_err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

Napi::Error NotSupportedError(Napi::Env env, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, "ERR_NOT_SUPPORTED_ON_WINDOWS"));
  return e;
}

Napi::Function NotSupportedFunction(Napi::Env env, const char* name, const char* message) {
  std::string text = message;
  return Napi::Function::New(
      env, [text](const Napi::CallbackInfo& info) -> Napi::Value { throw NotSupportedError(info.Env(), text); }, name);
}

HANDLE FdToHandle(Napi::Env env, int fd, const char* syscall) {
  HANDLE h = fd < 0 ? INVALID_HANDLE_VALUE : uv_get_osfhandle(fd);
  if (h == INVALID_HANDLE_VALUE || h == nullptr) ThrowWin32(env, ERROR_INVALID_HANDLE, syscall);
  return h;
}

int HandleToFd(Napi::Env env, HANDLE h, const char* syscall) {
  int fd = uv_open_osfhandle(h);
  if (fd < 0) {
    CloseHandle(h);
    ThrowWin32(env, ERROR_TOO_MANY_OPEN_FILES, syscall);
  }
  return fd;
}

int CloseFd(Napi::Env env, int fd) {
  // Synchronous uv_fs_close (no callback): _close() in Node's CRT, which also closes
  // the HANDLE.
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  uv_fs_t req;
  int r = uv_fs_close(loop, &req, fd, nullptr);
  uv_fs_req_cleanup(&req);
  return r;
}

std::wstring Utf8ToWide(Napi::Env env, const std::string& s) {
  if (s.empty()) return std::wstring();
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), nullptr, 0);
  if (n <= 0) ThrowWin32(env, GetLastError(), "MultiByteToWideChar");
  std::wstring w(static_cast<size_t>(n), L'\0');
  if (MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), static_cast<int>(s.size()), &w[0], n) != n)
    ThrowWin32(env, GetLastError(), "MultiByteToWideChar");
  return w;
}

}  // namespace mp
