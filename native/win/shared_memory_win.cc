// Shared memory on Windows (CPython's SharedMemory on Windows: pagefile-backed
// sections), with the JS names of native/shared_memory.cc.
//
// Differences from POSIX, as in CPython:
//  - A section has a fixed size, given when it is created. shmOpen(name, create)
//    therefore creates it at ftruncate(fd, size), the next call SharedMemory makes
//    (or at once when a 5th argument `size` is given). It cannot grow afterwards.
//  - A section lives while some process has a handle to it or a view of it:
//    shmUnlink is a no-op.
//  - The size of a section opened by name is its size rounded up to whole pages.
//  - A leading '/' of a POSIX-style name is dropped, so SharedMemory({ name: 'x' })
//    here and SharedMemory(name='x') in CPython on Windows open the same section.
//  - mmapInto() does not exist: Windows cannot map a view over memory V8 owns (and
//    Node does not enable V8's sandbox on Windows, so mmap() works).
//
// The "fds" returned are numbers from kShmFdBase up (see win_util.h), kept in a table
// here: several fds (dup) share one section handle, closed with the last of them.
#include "win_util.h"

#include <atomic>
#include <climits>
#include <memory>
#include <string>
#include <unordered_map>

namespace mp {
namespace {

std::atomic<int64_t> g_mappedBytes{0};
std::atomic<int64_t> g_mappings{0};

struct Section {
  HANDLE handle = nullptr;  // null until created (size not known yet) or for size 0
  std::wstring name;        // empty: anonymous
  bool exclusive = false;
  bool inheritable = false;
  bool size_known = false;
  uint64_t size = 0;
  ~Section() {
    if (handle != nullptr) CloseHandle(handle);
  }
};

SRWLOCK g_mu = SRWLOCK_INIT;
std::unordered_map<int, std::shared_ptr<Section>> g_fds;  // guarded by g_mu
int g_next_fd = kShmFdBase;                               // guarded by g_mu; never reused

struct Guard {
  Guard() { AcquireSRWLockExclusive(&g_mu); }
  ~Guard() { ReleaseSRWLockExclusive(&g_mu); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
};

// With g_mu held.
int NewFdLocked(Napi::Env env, std::shared_ptr<Section> s) {
  if (g_next_fd == INT_MAX) ThrowWin32(env, ERROR_TOO_MANY_OPEN_FILES, "shmOpen");
  int fd = g_next_fd++;
  g_fds.emplace(fd, std::move(s));
  return fd;
}

// With g_mu held.
Section& LookupLocked(Napi::Env env, int fd, const char* syscall) {
  auto it = IsShmFd(fd) ? g_fds.find(fd) : g_fds.end();
  if (it == g_fds.end()) {
    throw UvError(env, UV_EBADF, syscall,
                  "fd " + std::to_string(fd) + " is not an open shared memory fd (on Windows only fds from shmOpen "
                                               "and anonMemoryFile can be mapped)");
  }
  return *it->second;
}

std::string ArgName(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsString()) throw Napi::TypeError::New(info.Env(), "name must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (name.find('\0') != std::string::npos)
    throw Napi::TypeError::New(info.Env(), "name must not contain NUL characters");
  return name;
}

uint64_t ArgSize(const Napi::CallbackInfo& info, size_t i) {
  int64_t size = ArgInt64(info, i, "size");
  if (size < 0) throw Napi::RangeError::New(info.Env(), "size must not be negative");
  return static_cast<uint64_t>(size);
}

// Section object name of a shm name: without the leading '/' of POSIX names.
std::wstring SectionName(const Napi::CallbackInfo& info, const std::string& name) {
  std::string n = !name.empty() && name[0] == '/' ? name.substr(1) : name;
  if (n.empty()) throw Napi::TypeError::New(info.Env(), "name must not be empty");
  if (n.find('\\') != std::string::npos)
    throw Napi::TypeError::New(info.Env(), "name must not contain '\\' on Windows (object names cannot)");
  return Utf8ToWide(info.Env(), n);
}

// With g_mu held: creates the section of `s` with `size` bytes (nothing for 0 bytes:
// Windows has no empty sections).
void CreateSectionLocked(Napi::Env env, Section& s, uint64_t size) {
  if (size == 0) {
    s.size = 0;
    s.size_known = true;
    return;
  }
  SECURITY_ATTRIBUTES sa = {sizeof sa, nullptr, s.inheritable ? TRUE : FALSE};
  SetLastError(NO_ERROR);
  HANDLE h = CreateFileMappingW(INVALID_HANDLE_VALUE, &sa, PAGE_READWRITE, static_cast<DWORD>(size >> 32),
                                static_cast<DWORD>(size & 0xffffffffu), s.name.empty() ? nullptr : s.name.c_str());
  if (h == nullptr) ThrowWin32(env, GetLastError(), "CreateFileMappingW");
  if (!s.name.empty() && GetLastError() == ERROR_ALREADY_EXISTS) {
    if (s.exclusive) {
      CloseHandle(h);
      ThrowWin32(env, ERROR_ALREADY_EXISTS, "CreateFileMappingW");
    }
    s.handle = h;  // someone else's section: it keeps its own size
    s.size_known = false;
    return;
  }
  s.handle = h;
  s.size = size;
  s.size_known = true;
}

// With g_mu held: the size of the section (page-rounded for one opened by name,
// found as CPython does: map a view and ask VirtualQuery).
uint64_t SizeLocked(Napi::Env env, Section& s) {
  if (s.size_known || s.handle == nullptr) return s.size;
  void* p = MapViewOfFile(s.handle, FILE_MAP_READ, 0, 0, 0);
  if (p == nullptr) ThrowWin32(env, GetLastError(), "MapViewOfFile");
  MEMORY_BASIC_INFORMATION mbi;
  SIZE_T r = VirtualQuery(p, &mbi, sizeof mbi);
  DWORD err = r == 0 ? GetLastError() : NO_ERROR;
  UnmapViewOfFile(p);
  if (r == 0) ThrowWin32(env, err, "VirtualQuery");
  s.size = mbi.RegionSize;
  s.size_known = true;
  return s.size;
}

// shmOpen(name, create, exclusive, mode = 0o600, size?) -> fd. `mode` has no meaning
// on Windows (a section gets the default security of its creator, as in CPython).
Napi::Value ShmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::wstring name = SectionName(info, ArgName(info, 0));
  bool create = ArgBool(info, 1, false);
  bool exclusive = ArgBool(info, 2, false);
  if (info.Length() > 3 && info[3].IsNumber()) ArgInt(info, 3, "mode");
  bool has_size = info.Length() > 4 && info[4].IsNumber();
  uint64_t size = has_size ? ArgSize(info, 4) : 0;
  auto s = std::make_shared<Section>();
  s->name = name;
  s->exclusive = create && exclusive;
  HANDLE h = OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE, FALSE, name.c_str());
  if (h != nullptr) {
    if (create && exclusive) {
      CloseHandle(h);
      ThrowWin32(env, ERROR_ALREADY_EXISTS, "CreateFileMappingW");
    }
    s->handle = h;
  } else {
    DWORD e = GetLastError();
    if (!create || e != ERROR_FILE_NOT_FOUND) ThrowWin32(env, e, "OpenFileMappingW");
  }
  Guard g;
  if (create && s->handle == nullptr && has_size) CreateSectionLocked(env, *s, size);
  return Napi::Number::New(env, NewFdLocked(env, std::move(s)));
}

// shmUnlink(name): nothing to do on Windows (the section goes with its last handle).
Napi::Value ShmUnlink(const Napi::CallbackInfo& info) {
  ArgName(info, 0);
  return info.Env().Undefined();
}

// anonMemoryFile(size) -> fd of a nameless section.
Napi::Value AnonMemoryFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t size = ArgSize(info, 0);
  auto s = std::make_shared<Section>();
  Guard g;
  CreateSectionLocked(env, *s, size);
  return Napi::Number::New(env, NewFdLocked(env, std::move(s)));
}

// ftruncate(fd, size): creates a section opened with create=true; otherwise only
// shrinks the size this process reports (a section cannot be resized).
Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  uint64_t size = ArgSize(info, 1);
  Guard g;
  Section& s = LookupLocked(env, fd, "ftruncate");
  if (s.handle == nullptr) {
    CreateSectionLocked(env, s, size);
    return env.Undefined();
  }
  uint64_t current = SizeLocked(env, s);
  if (size > current) {
    throw NotSupportedError(env, "ftruncate: a Windows shared memory section cannot grow after it was created (" +
                                     std::to_string(current) + " bytes, asked for " + std::to_string(size) + ")");
  }
  s.size = size;
  return env.Undefined();
}

// fstatSize(fd) -> size in bytes
Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  Guard g;
  return Napi::Number::New(env, static_cast<double>(SizeLocked(env, LookupLocked(env, fd, "fstat"))));
}

struct Mapping {
  void* addr;
  size_t length;
};

void Unmap(Mapping* m) {
  UnmapViewOfFile(m->addr);
  g_mappedBytes -= static_cast<int64_t>(m->length);
  g_mappings--;
  delete m;
}

// mmap(fd, size) -> ArrayBuffer over a view of the section (no copy), unmapped once
// the buffer is collected or detached.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  uint64_t size = ArgSize(info, 1);
  if (size > SIZE_MAX) throw Napi::RangeError::New(env, "size too large for this process");
  void* p;
  {
    Guard g;
    Section& s = LookupLocked(env, fd, "mmap");
    if (size == 0) return Napi::ArrayBuffer::New(env, 0);
    if (s.handle == nullptr)
      throw UvError(env, UV_EINVAL, "mmap", "the shared memory has no size yet: ftruncate(fd, size) first");
    p = MapViewOfFile(s.handle, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, static_cast<SIZE_T>(size));
    if (p == nullptr) ThrowWin32(env, GetLastError(), "MapViewOfFile");
  }
  Mapping* m = new Mapping{p, static_cast<size_t>(size)};
  napi_value result;
  napi_status status = napi_create_external_arraybuffer(
      env, p, static_cast<size_t>(size), [](napi_env, void*, void* hint) { Unmap(static_cast<Mapping*>(hint)); }, m,
      &result);
  if (status != napi_ok) {
    UnmapViewOfFile(p);
    delete m;
    Napi::Error err = Napi::Error::New(env, "external ArrayBuffers are not allowed in this Node build");
    err.Set("code", Napi::String::New(env, status == 22 ? "ERR_EXTERNAL_BUFFERS" : "ERR_NAPI"));
    err.Set("status", Napi::Number::New(env, status));
    throw err;
  }
  g_mappedBytes += static_cast<int64_t>(size);
  g_mappings++;
  return Napi::Value(env, result);
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("mappings", Napi::Number::New(env, static_cast<double>(g_mappings.load())));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(g_mappedBytes.load())));
  return o;
}

// detach(arrayBuffer): as on POSIX (releases an mmap() view now).
Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) return Napi::Boolean::New(env, false);
  bool detached = false;
  if (napi_is_detached_arraybuffer(env, info[0], &detached) != napi_ok) return Napi::Boolean::New(env, false);
  if (detached) return Napi::Boolean::New(env, true);
  return Napi::Boolean::New(env, napi_detach_arraybuffer(env, info[0]) == napi_ok);
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return Napi::Number::New(info.Env(), static_cast<double>(si.dwPageSize));
}

}  // namespace

bool ShmFdIsOpen(int fd) {
  Guard g;
  return g_fds.count(fd) != 0;
}

void ShmCloseFd(Napi::Env env, int fd) {
  std::shared_ptr<Section> last;  // released after the lock (CloseHandle outside it)
  Guard g;
  auto it = g_fds.find(fd);
  if (it == g_fds.end()) ThrowWin32(env, ERROR_INVALID_HANDLE, "close");
  last = std::move(it->second);
  g_fds.erase(it);
}

int ShmDupFd(Napi::Env env, int fd) {
  Guard g;
  auto it = g_fds.find(fd);
  if (it == g_fds.end()) ThrowWin32(env, ERROR_INVALID_HANDLE, "dup");
  return NewFdLocked(env, it->second);
}

void ShmSetInheritable(Napi::Env env, int fd, bool inheritable) {
  Guard g;
  Section& s = LookupLocked(env, fd, "SetHandleInformation");
  s.inheritable = inheritable;
  if (s.handle != nullptr &&
      !SetHandleInformation(s.handle, HANDLE_FLAG_INHERIT, inheritable ? HANDLE_FLAG_INHERIT : 0))
    ThrowWin32(env, GetLastError(), "SetHandleInformation");
}

void InitSharedMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("shmOpen", Napi::Function::New(env, ShmOpen, "shmOpen"));
  exports.Set("shmUnlink", Napi::Function::New(env, ShmUnlink, "shmUnlink"));
  exports.Set("anonMemoryFile", Napi::Function::New(env, AnonMemoryFile, "anonMemoryFile"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fstatSize", Napi::Function::New(env, FstatSize, "fstatSize"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mmapInto",
              NotSupportedFunction(env, "mmapInto",
                                   "mmapInto: Windows cannot map shared memory over memory V8 owns; use mmap()"));
  exports.Set("detachArrayBuffer", Napi::Function::New(env, Detach, "detachArrayBuffer"));
  exports.Set("shmStats", Napi::Function::New(env, Stats, "shmStats"));
  exports.Set("pageSize", Napi::Function::New(env, PageSize, "pageSize"));
}

}  // namespace mp
