// POSIX shared memory for SharedMemory and the sharedctypes heap (Python's
// _posixshmem + mmap): shm_open/shm_unlink, anonymous memory files for arenas,
// and mappings exposed to JS as ArrayBuffers over the mapped pages (no copy).
//
// Two ways to expose a mapping:
//  - mmap(fd, size): an external ArrayBuffer whose finalizer munmaps once the last
//    view of it is gone. Detaching it (close()) unmaps at once.
//  - mmapInto(fd, size, view): for Node builds where external buffers are not
//    allowed (V8 sandbox). JS creates memory V8 owns (a shared WebAssembly.Memory,
//    whose buffer is a page-aligned SharedArrayBuffer) and we map the segment over
//    it with MAP_FIXED; V8 unmaps that range when the memory is collected.
#include "common.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <string>

namespace mp {
namespace {

std::atomic<int64_t> g_mappedBytes{0};
std::atomic<int64_t> g_mappings{0};

std::string ArgName(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), "name must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (name.find('\0') != std::string::npos)
    throw Napi::TypeError::New(info.Env(), "name must not contain NUL characters");
  return name;
}

size_t ArgSize(const Napi::CallbackInfo& info, size_t i) {
  int64_t size = ArgInt64(info, i, "size");
  if (size < 0) throw Napi::RangeError::New(info.Env(), "size must not be negative");
  return static_cast<size_t>(size);
}

// shmOpen(name, create, exclusive, mode = 0o600) -> fd (close-on-exec)
Napi::Value ShmOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgName(info, 0);
  bool create = ArgBool(info, 1, false);
  bool exclusive = ArgBool(info, 2, false);
  int mode = info.Length() > 3 && info[3].IsNumber() ? ArgInt(info, 3, "mode") : 0600;
  int flags = O_RDWR;
  if (create) flags |= O_CREAT;
  if (exclusive) flags |= O_EXCL;
  int fd = RetryEintr([&] { return shm_open(name.c_str(), flags, static_cast<mode_t>(mode)); });
  if (fd == -1) ThrowErrno(env, errno, "shm_open");
  if (SetCloexec(fd, true) == -1) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "fcntl");
  }
  return Napi::Number::New(env, fd);
}

// shmUnlink(name)
Napi::Value ShmUnlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgName(info, 0);
  if (RetryEintr([&] { return shm_unlink(name.c_str()); }) == -1) ThrowErrno(env, errno, "shm_unlink");
  return env.Undefined();
}

// anonMemoryFile(size) -> fd of a nameless shared memory file (memfd_create on
// Linux; elsewhere a shm_open'ed random name that is unlinked at once). Nothing is
// left in /dev/shm, and the memory goes away with the last fd and mapping.
Napi::Value AnonMemoryFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t size = ArgSize(info, 0);
  int fd = -1;
#if defined(__linux__) && defined(SYS_memfd_create)
  fd = static_cast<int>(syscall(SYS_memfd_create, "mp-heap", 1u /* MFD_CLOEXEC */));
  if (fd == -1 && errno != ENOSYS) ThrowErrno(env, errno, "memfd_create");
#endif
  if (fd == -1) {
    std::random_device rd;
    for (int attempt = 0; attempt < 100 && fd == -1; attempt++) {
      char name[32];
      snprintf(name, sizeof name, "/mp-heap-%08x%08x", rd(), rd());
      fd = RetryEintr([&] { return shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600); });
      if (fd == -1) {
        if (errno == EEXIST) continue;
        ThrowErrno(env, errno, "shm_open");
      }
      shm_unlink(name);
    }
    if (fd == -1) ThrowErrno(env, EEXIST, "shm_open");
    SetCloexec(fd, true);
  }
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) == -1) {
    int err = errno;
    close(fd);
    ThrowErrno(env, err, "ftruncate");
  }
  return Napi::Number::New(env, fd);
}

// ftruncate(fd, size)
Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  size_t size = ArgSize(info, 1);
  if (RetryEintr([&] { return ftruncate(fd, static_cast<off_t>(size)); }) == -1) ThrowErrno(env, errno, "ftruncate");
  return env.Undefined();
}

// fstatSize(fd) -> st_size
Napi::Value FstatSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  struct stat st;
  if (RetryEintr([&] { return fstat(fd, &st); }) == -1) ThrowErrno(env, errno, "fstat");
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

struct Mapping {
  void* addr;
  size_t length;
};

void Unmap(Napi::Env, void*, Mapping* m) {
  munmap(m->addr, m->length);
  g_mappedBytes -= static_cast<int64_t>(m->length);
  g_mappings--;
  delete m;
}

void* MapShared(Napi::Env env, int fd, size_t size, void* at) {
  int flags = MAP_SHARED | (at ? MAP_FIXED : 0);
  void* p = mmap(at, size, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  return p;
}

// mmap(fd, size) -> ArrayBuffer over a MAP_SHARED mapping of the whole file.
// Throws an error with code 'ERR_EXTERNAL_BUFFERS' where external memory cannot
// back an ArrayBuffer; the caller then uses mmapInto().
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  size_t size = ArgSize(info, 1);
  if (size == 0) return Napi::ArrayBuffer::New(env, 0);
  void* p = MapShared(env, fd, size, nullptr);
  Mapping* m = new Mapping{p, size};
  napi_value result;
  napi_status status = napi_create_external_arraybuffer(
      env, p, size,
      [](napi_env e, void* /*data*/, void* hint) { Unmap(Napi::Env(e), nullptr, static_cast<Mapping*>(hint)); }, m,
      &result);
  if (status != napi_ok) {
    munmap(p, size);
    delete m;
    // napi_no_external_buffers_allowed (22) where V8's sandbox is on.
    Napi::Error err = Napi::Error::New(env, "external ArrayBuffers are not allowed in this Node build");
    err.Set("code", Napi::String::New(env, status == 22 ? "ERR_EXTERNAL_BUFFERS" : "ERR_NAPI"));
    err.Set("status", Napi::Number::New(env, status));
    throw err;
  }
  g_mappedBytes += static_cast<int64_t>(size);
  g_mappings++;
  return Napi::Value(env, result);
}

// mmapInto(fd, size, view): maps the file over the page-aligned memory of `view`
// (a Uint8Array over memory V8 owns, at least `size` bytes long). V8 releases the
// range, and so our mapping, when that memory is collected.
Napi::Value MmapInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  size_t size = ArgSize(info, 1);
  if (info.Length() < 3 || !info[2].IsTypedArray()) throw Napi::TypeError::New(env, "view must be a Uint8Array");
  Napi::TypedArray ta = info[2].As<Napi::TypedArray>();
  napi_typedarray_type type;
  size_t length;
  void* data;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, ta, &type, &length, &data, &ab, &offset) != napi_ok || data == nullptr)
    throw Napi::TypeError::New(env, "cannot get the memory of view");
  long page = sysconf(_SC_PAGESIZE);
  if (reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(page) != 0)
    throw Napi::Error::New(env, "mmapInto: the view's memory is not page-aligned");
  if (length < size) throw Napi::RangeError::New(env, "mmapInto: the view is shorter than size");
  if (size == 0) return env.Undefined();
  MapShared(env, fd, size, data);
  return env.Undefined();
}

// stats() -> { mappings, bytes } of external-buffer mappings still alive (tests).
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("mappings", Napi::Number::New(env, static_cast<double>(g_mappings.load())));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(g_mappedBytes.load())));
  return o;
}

// detach(arrayBuffer): detaches an ArrayBuffer from mmap() so its mapping is
// released now; its views become empty. Returns false if it cannot be detached.
Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArrayBuffer()) return Napi::Boolean::New(env, false);
  bool detached = false;
  if (napi_is_detached_arraybuffer(env, info[0], &detached) != napi_ok) return Napi::Boolean::New(env, false);
  if (detached) return Napi::Boolean::New(env, true);  // already detached
  return Napi::Boolean::New(env, napi_detach_arraybuffer(env, info[0]) == napi_ok);
}

Napi::Value PageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

void InitSharedMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("shmOpen", Napi::Function::New(env, ShmOpen, "shmOpen"));
  exports.Set("shmUnlink", Napi::Function::New(env, ShmUnlink, "shmUnlink"));
  exports.Set("anonMemoryFile", Napi::Function::New(env, AnonMemoryFile, "anonMemoryFile"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fstatSize", Napi::Function::New(env, FstatSize, "fstatSize"));
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mmapInto", Napi::Function::New(env, MmapInto, "mmapInto"));
  exports.Set("detachArrayBuffer", Napi::Function::New(env, Detach, "detachArrayBuffer"));
  exports.Set("shmStats", Napi::Function::New(env, Stats, "shmStats"));
  exports.Set("pageSize", Napi::Function::New(env, PageSize, "pageSize"));
}

}  // namespace mp
