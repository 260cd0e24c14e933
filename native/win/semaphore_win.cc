// Windows semaphores (CreateSemaphoreW / OpenSemaphoreW) for Lock/RLock/Semaphore,
// as the Windows part of CPython's Modules/_multiprocessing/semaphore.c, with the JS
// API of native/semaphore.cc (SemLock, setSemCallback, semFastAcquire,
// semFastRelease, semUnlink).
//
// Differences from POSIX:
//  - A named Windows semaphore lives while some process has a handle to it: there is
//    nothing to unlink (semUnlink is a no-op), and a name can be opened only while
//    its creator (or another holder) keeps it open.
//  - The semaphore itself enforces maxvalue (ReleaseSemaphore fails with
//    ERROR_TOO_MANY_POSTS: "released too many times").
//  - There is no fork(): no atfork state, ownership is simply per process.
//
// Async waits work as on POSIX: a semaphore with pending async waiters in this process
// gets one waiter thread of its own (not a libuv threadpool thread). It waits in
// slices, takes one unit per waiter in FIFO order and hands it to the event loop
// through a uv_async_t; it lingers briefly once its queue is empty, then ends.
#include "win_util.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <deque>
#include <memory>
#include <random>
#include <unordered_map>
#include <vector>

namespace mp {
namespace {

enum Kind { RECURSIVE_MUTEX = 0, SEMAPHORE = 1 };

constexpr DWORD kSliceMs = 20;    // a waiter thread re-checks its queue this often
constexpr DWORD kLingerMs = 200;  // an idle waiter thread waits this long for new work
constexpr int kSemValueMax = LONG_MAX;  // CPython's SEM_VALUE_MAX on Windows

// Errors reported to the JS callback are errno values (JS names them with
// os.constants.errno): a failed wait on a valid handle has no better one.
constexpr int kWaitErrno = EINVAL;

DWORD g_pid = 0;
SRWLOCK g_mu = SRWLOCK_INIT;
CONDITION_VARIABLE g_cv = CONDITION_VARIABLE_INIT;  // new work for idle waiter threads

void Lock() { AcquireSRWLockExclusive(&g_mu); }
void Unlock() { ReleaseSRWLockExclusive(&g_mu); }

struct Instance;
struct Core;

struct Waiter {
  uint32_t id = 0;
  std::shared_ptr<Core> core;
  std::shared_ptr<Core> post_on_success;  // released by the waiter thread as soon as it acquires
  Instance* inst = nullptr;
  int err = 0;
  bool granted = false;
};

struct Core {
  HANDLE sem = nullptr;
  int kind = SEMAPHORE;
  int maxvalue = 1;
  std::string name;
  // Touched by the JS thread only.
  int count = 0;
  DWORD owner = 0;
  // Guarded by g_mu.
  std::deque<Waiter*> queue;
  bool thread_running = false;
  ~Core() {
    if (sem != nullptr) CloseHandle(sem);
  }
};

// Per JS environment (main thread or a worker thread).
struct Instance {
  napi_env env = nullptr;
  uv_async_t* async = nullptr;
  Napi::FunctionReference callback;
  bool refed = false;
  bool dead = false;
  // Guarded by g_mu.
  std::vector<Waiter*> granted;
  std::unordered_map<uint32_t, Waiter*> waiters;
};

// Guarded by g_mu. Never freed, nor the Instances in it: threads may still point at them (the
// vector lives on the heap, so that exit does not destroy it under them either).
std::vector<Instance*>& g_instances = *new std::vector<Instance*>;

// 0: acquired; WAIT_TIMEOUT; anything else: failed (GetLastError() tells why).
DWORD WaitSem(HANDLE sem, DWORD ms) {
  DWORD r = WaitForSingleObjectEx(sem, ms, FALSE);
  if (r == WAIT_OBJECT_0) return 0;
  if (r == WAIT_TIMEOUT) return WAIT_TIMEOUT;
  if (r != WAIT_FAILED) SetLastError(ERROR_GEN_FAILURE);
  return WAIT_FAILED;
}

void PostAsyncLocked(Instance* inst) {
  if (!inst->dead && inst->async) uv_async_send(inst->async);
}

// The waiter thread of one semaphore.
DWORD WINAPI WaiterThread(LPVOID arg) {
  auto* holder = static_cast<std::shared_ptr<Core>*>(arg);
  std::shared_ptr<Core> core = *holder;
  delete holder;
  Lock();
  for (;;) {
    if (core->queue.empty()) {
      // Linger for new work without touching the semaphore (no stolen units).
      ULONGLONG until = GetTickCount64() + kLingerMs;
      while (core->queue.empty()) {
        ULONGLONG now = GetTickCount64();
        if (now >= until) break;
        SleepConditionVariableSRW(&g_cv, &g_mu, static_cast<DWORD>(until - now), 0);
      }
      if (core->queue.empty()) break;
    }
    Unlock();
    DWORD r = WaitSem(core->sem, kSliceMs);
    Lock();
    if (r == WAIT_TIMEOUT) continue;
    bool ok = r == 0;
    if (core->queue.empty()) {
      if (ok) ReleaseSemaphore(core->sem, 1, nullptr);  // every waiter left meanwhile: give the unit back
      continue;
    }
    Waiter* w = core->queue.front();
    core->queue.pop_front();
    w->granted = true;
    w->err = ok ? 0 : kWaitErrno;
    if (ok && w->post_on_success) ReleaseSemaphore(w->post_on_success->sem, 1, nullptr);
    w->inst->granted.push_back(w);
    PostAsyncLocked(w->inst);
    if (!ok) {
      // A broken semaphore: fail every waiter rather than spin.
      for (Waiter* o : core->queue) {
        o->granted = true;
        o->err = kWaitErrno;
        o->inst->granted.push_back(o);
        PostAsyncLocked(o->inst);
      }
      core->queue.clear();
    }
  }
  core->thread_running = false;
  Unlock();
  return 0;
}

// With g_mu held. Returns 0 or a Win32 error.
DWORD EnsureThreadLocked(const std::shared_ptr<Core>& core) {
  if (core->thread_running) {
    WakeAllConditionVariable(&g_cv);
    return 0;
  }
  auto* holder = new std::shared_ptr<Core>(core);
  HANDLE t = CreateThread(nullptr, 64 * 1024, WaiterThread, holder, STACK_SIZE_PARAM_IS_A_RESERVATION, nullptr);
  if (t == nullptr) {
    DWORD e = GetLastError();
    delete holder;
    return e;
  }
  CloseHandle(t);
  core->thread_running = true;
  return 0;
}

void UpdateRef(Instance* inst, size_t live) {
  if (!inst->async) return;
  bool want = live > 0;
  if (want == inst->refed) return;
  inst->refed = want;
  if (want) uv_ref(reinterpret_cast<uv_handle_t*>(inst->async));
  else uv_unref(reinterpret_cast<uv_handle_t*>(inst->async));
}

class SemLock;

// Slot table for the fast paths (raw N-API functions taking a small integer): one
// per JS thread, as each environment lives on one thread.
thread_local std::vector<Core*> t_slots;
thread_local std::vector<int32_t> t_free_slots;

void OnAsync(uv_async_t* handle);

void TeardownInstance(void* arg) {
  // Environment teardown: stop deliveries; the struct stays (threads may hold it).
  auto* i = static_cast<Instance*>(arg);
  Lock();
  i->dead = true;
  for (auto& kv : i->waiters) {
    Waiter* w = kv.second;
    if (!w->granted) {
      auto& q = w->core->queue;
      q.erase(std::remove(q.begin(), q.end(), w), q.end());
    }
  }
  i->waiters.clear();
  i->granted.clear();
  Unlock();
  i->callback.Reset();
  if (i->async) CloseHandleAtTeardown(reinterpret_cast<uv_handle_t*>(i->async));
  i->async = nullptr;
}

// Not napi instance data: that slot belongs to the whole addon.
Instance* GetInstance(Napi::Env env) {
  napi_env raw = env;
  Lock();
  for (Instance* i : g_instances) {
    if (i->env == raw && !i->dead) {
      Unlock();
      return i;
    }
  }
  auto* inst = new Instance();
  inst->env = raw;
  g_instances.push_back(inst);
  Unlock();
  napi_add_env_cleanup_hook(raw, TeardownInstance, inst);
  return inst;
}

void EnsureAsync(Napi::Env env, Instance* inst) {
  if (inst->async) return;
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  auto* a = new uv_async_t;
  int r = uv_async_init(loop, a, OnAsync);
  if (r != 0) {
    delete a;
    throw Napi::Error::New(env, std::string("uv_async_init: ") + uv_err_name(r));
  }
  a->data = inst;
  uv_unref(reinterpret_cast<uv_handle_t*>(a));
  inst->async = a;
  inst->refed = false;
}

std::string RandomName(const std::string& prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ (static_cast<uint64_t>(GetCurrentProcessId()) << 32));
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
  std::string s = prefix;
  for (int i = 0; i < 8; i++) s += alphabet[rng() % (sizeof alphabet - 1)];
  return s;
}

// Milliseconds -> a Win32 wait time (rounded up; INFINITE is never produced).
DWORD WaitMs(double ms) {
  if (!(ms > 0)) return 0;
  double up = std::ceil(ms);
  return up >= static_cast<double>(INFINITE - 1) ? INFINITE - 1 : static_cast<DWORD>(up);
}

Napi::Error ReleasedTooManyTimes(Napi::Env env) {
  Napi::Error e = Napi::RangeError::New(env, "semaphore or lock released too many times");
  e.Set("code", Napi::String::New(env, "ERR_RELEASED_TOO_MANY_TIMES"));
  return e;
}

class SemLock : public Napi::ObjectWrap<SemLock> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SemLock",
                       {InstanceMethod("acquire", &SemLock::Acquire),
                        InstanceMethod("acquireAsync", &SemLock::AcquireAsync),
                        InstanceMethod("cancel", &SemLock::Cancel),
                        InstanceMethod("release", &SemLock::Release),
                        InstanceMethod("count", &SemLock::Count),
                        InstanceMethod("isMine", &SemLock::IsMine),
                        InstanceMethod("getValue", &SemLock::GetValue),
                        InstanceMethod("isZero", &SemLock::IsZero),
                        InstanceMethod("close", &SemLock::Close),
                        InstanceAccessor("name", &SemLock::Name, nullptr),
                        InstanceAccessor("kind", &SemLock::GetKind, nullptr),
                        InstanceAccessor("maxvalue", &SemLock::MaxValue, nullptr),
                        InstanceAccessor("closed", &SemLock::Closed, nullptr),
                        StaticValue("RECURSIVE_MUTEX", Napi::Number::New(env, RECURSIVE_MUTEX)),
                        StaticValue("SEMAPHORE", Napi::Number::New(env, SEMAPHORE)),
                        StaticValue("SEM_VALUE_MAX", Napi::Number::New(env, kSemValueMax))});
  }

  // new SemLock(kind, value, maxvalue, prefixOrName, create)
  //   create=true: a new semaphore named prefix + 8 random characters (never an existing one);
  //   create=false: opens the existing semaphore `name`.
  SemLock(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SemLock>(info) {
    Napi::Env env = info.Env();
    int kind = ArgInt(info, 0, "kind");
    int value = ArgInt(info, 1, "value");
    int maxvalue = ArgInt(info, 2, "maxvalue");
    if (kind != RECURSIVE_MUTEX && kind != SEMAPHORE) throw Napi::RangeError::New(env, "unknown semaphore kind");
    if (value < 0 || value > kSemValueMax) throw Napi::RangeError::New(env, "semaphore value out of range");
    if (info.Length() < 4 || !info[3].IsString()) throw Napi::TypeError::New(env, "name must be a string");
    std::string name = info[3].As<Napi::String>().Utf8Value();
    bool create = ArgBool(info, 4, true);
    if (create && (maxvalue < 1 || maxvalue < value))
      throw Napi::RangeError::New(env, "semaphore maxvalue out of range (must be >= 1 and >= value)");
    core_ = std::make_shared<Core>();
    core_->kind = kind;
    core_->maxvalue = maxvalue;
    if (create) {
      for (int attempt = 0;; attempt++) {
        std::string candidate = RandomName(name);
        std::wstring wname = Utf8ToWide(env, candidate);
        SetLastError(NO_ERROR);
        HANDLE s = CreateSemaphoreW(nullptr, value, maxvalue, wname.c_str());
        DWORD e = GetLastError();
        if (s != nullptr && e != ERROR_ALREADY_EXISTS) {
          core_->sem = s;
          core_->name = candidate;
          break;
        }
        if (s != nullptr) {
          CloseHandle(s);  // an existing semaphore of that name: not ours
          e = ERROR_ALREADY_EXISTS;
        }
        if (e != ERROR_ALREADY_EXISTS || attempt > 100) ThrowWin32(env, e, "CreateSemaphoreW");
      }
    } else {
      std::wstring wname = Utf8ToWide(env, name);
      HANDLE s = OpenSemaphoreW(SYNCHRONIZE | SEMAPHORE_MODIFY_STATE, FALSE, wname.c_str());
      if (s == nullptr) ThrowWin32(env, GetLastError(), "OpenSemaphoreW");
      core_->sem = s;
      core_->name = name;
    }
    if (!t_free_slots.empty()) {
      slot_ = t_free_slots.back();
      t_free_slots.pop_back();
      t_slots[slot_] = core_.get();
    } else {
      slot_ = static_cast<int32_t>(t_slots.size());
      t_slots.push_back(core_.get());
    }
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value("slot", Napi::Number::New(env, slot_), napi_default));
  }

  ~SemLock() override { DropCore(); }

  void DropCore() {
    // Waiters hold their own reference to the core; the handle closes with the last one.
    if (slot_ >= 0) {
      t_slots[slot_] = nullptr;
      t_free_slots.push_back(slot_);
      slot_ = -1;
    }
    core_.reset();
  }

 private:
  Core* Checked(Napi::Env env) {
    if (!core_ || core_->sem == nullptr) throw Napi::Error::New(env, "the semaphore is closed");
    return core_.get();
  }

  static bool Mine(Core* c) { return c->count > 0 && c->owner == g_pid; }

  // Takes a unit the waiter thread acquired for an async waiter of this process that
  // JS has not seen yet: the sync caller gets it, the waiter queues again at the front.
  // Without this, a blocking sync acquire could wait for ever for its own process.
  bool TrySteal(Napi::Env env) {
    Instance* inst = GetInstance(env);
    bool stolen = false;
    Lock();
    for (auto it = inst->granted.begin(); it != inst->granted.end(); ++it) {
      Waiter* w = *it;
      if (w->core.get() == core_.get() && w->err == 0 && !w->post_on_success) {
        inst->granted.erase(it);
        w->granted = false;
        core_->queue.push_front(w);
        EnsureThreadLocked(core_);
        stolen = true;
        break;
      }
    }
    Unlock();
    return stolen;
  }

  bool HasLocalWaiters() {
    Lock();
    bool any = !core_->queue.empty();
    Unlock();
    return any;
  }

  void Acquired(Core* c) {
    c->count++;
    c->owner = g_pid;
  }

  // acquire(blocking = true, timeoutMs = null): boolean
  Napi::Value Acquire(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core* c = Checked(env);
    if (c->kind == RECURSIVE_MUTEX && Mine(c)) {
      c->count++;
      return Napi::Boolean::New(env, true);
    }
    DWORD r = WaitSem(c->sem, 0);
    if (r == 0) {
      Acquired(c);
      return Napi::Boolean::New(env, true);
    }
    if (r != WAIT_TIMEOUT) ThrowWin32(env, GetLastError(), "WaitForSingleObjectEx");
    bool blocking = ArgBool(info, 0, true);
    double timeout = -1;  // for ever
    if (info.Length() > 1 && info[1].IsNumber()) {
      timeout = info[1].As<Napi::Number>().DoubleValue();
      if (!(timeout > 0)) blocking = false;
    }
    if (!blocking) return Napi::Boolean::New(env, false);
    if (TrySteal(env)) {
      Acquired(c);
      return Napi::Boolean::New(env, true);
    }
    // With async waiters of this process on the same semaphore, wait in slices so a
    // unit their thread takes meanwhile can be claimed (see TrySteal).
    bool sliced = HasLocalWaiters();
    const ULONGLONG deadline = timeout < 0 ? 0 : GetTickCount64() + WaitMs(timeout);
    for (;;) {
      DWORD wait_ms;
      bool last = false;  // the wait ends at the deadline
      if (timeout < 0) {
        wait_ms = sliced ? 5 : INFINITE;
      } else {
        ULONGLONG now = GetTickCount64();
        ULONGLONG left = deadline > now ? deadline - now : 0;
        if (sliced && left > 5) {
          wait_ms = 5;
        } else {
          wait_ms = left >= INFINITE - 1 ? INFINITE - 1 : static_cast<DWORD>(left);
          last = left < INFINITE - 1;
        }
      }
      r = WaitSem(c->sem, wait_ms);
      if (r == 0) break;
      if (r != WAIT_TIMEOUT) ThrowWin32(env, GetLastError(), "WaitForSingleObjectEx");
      if (last) return Napi::Boolean::New(env, false);
      if (sliced && TrySteal(env)) break;
    }
    Acquired(c);
    return Napi::Boolean::New(env, true);
  }

  // acquireAsync(id, postOnSuccess?: SemLock): true when acquired at once, false when
  // queued (the callback set by setSemCallback gets `id` later), or throws.
  Napi::Value AcquireAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core* c = Checked(env);
    uint32_t id = static_cast<uint32_t>(ArgInt64(info, 0, "id"));
    std::shared_ptr<Core> post;
    if (info.Length() > 1 && info[1].IsObject()) {
      SemLock* other = SemLock::Unwrap(info[1].As<Napi::Object>());
      if (!other || !other->core_ || other->core_->sem == nullptr)
        throw Napi::TypeError::New(env, "postOnSuccess must be an open SemLock");
      post = other->core_;
    }
    if (c->kind == RECURSIVE_MUTEX && Mine(c)) {
      c->count++;
      return Napi::Boolean::New(env, true);
    }
    DWORD r = WaitSem(c->sem, 0);
    if (r == 0) {
      Acquired(c);
      if (post) ReleaseSemaphore(post->sem, 1, nullptr);
      return Napi::Boolean::New(env, true);
    }
    if (r != WAIT_TIMEOUT) ThrowWin32(env, GetLastError(), "WaitForSingleObjectEx");
    Instance* inst = GetInstance(env);
    if (inst->callback.IsEmpty()) throw Napi::Error::New(env, "setSemCallback() was not called");
    EnsureAsync(env, inst);
    auto* w = new Waiter();
    w->id = id;
    w->core = core_;
    w->post_on_success = post;
    w->inst = inst;
    Lock();
    c->queue.push_back(w);
    inst->waiters[id] = w;
    DWORD e = EnsureThreadLocked(core_);
    if (e != 0) {
      c->queue.pop_back();
      inst->waiters.erase(id);
      Unlock();
      delete w;
      ThrowWin32(env, e, "CreateThread");
    }
    size_t live = inst->waiters.size();
    Unlock();
    UpdateRef(inst, live);
    return Napi::Boolean::New(env, false);
  }

  // cancel(id): true when the waiter was still queued (it will never be granted),
  // false when its grant is already on the way (it will be delivered).
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id = static_cast<uint32_t>(ArgInt64(info, 0, "id"));
    Instance* inst = GetInstance(env);
    bool cancelled = false;
    Lock();
    auto it = inst->waiters.find(id);
    Waiter* w = it == inst->waiters.end() ? nullptr : it->second;
    if (w && !w->granted) {
      auto& q = w->core->queue;
      q.erase(std::remove(q.begin(), q.end(), w), q.end());
      inst->waiters.erase(it);
      cancelled = true;
    } else if (!w) {
      cancelled = true;  // unknown: nothing will be delivered
    }
    size_t live = inst->waiters.size();
    Unlock();
    if (cancelled) delete w;
    UpdateRef(inst, live);
    return Napi::Boolean::New(env, cancelled);
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core* c = Checked(env);
    if (c->kind == RECURSIVE_MUTEX) {
      if (!Mine(c)) {
        Napi::Error e = Napi::Error::New(env, "cannot release an RLock that this process does not own: acquire() it first");
        e.Set("code", Napi::String::New(env, "ERR_LOCK_NOT_OWNED"));
        throw e;
      }
      if (c->count > 1) {
        c->count--;
        return env.Undefined();
      }
    }
    if (!ReleaseSemaphore(c->sem, 1, nullptr)) {
      DWORD e = GetLastError();
      if (e == ERROR_TOO_MANY_POSTS) throw ReleasedTooManyTimes(env);
      ThrowWin32(env, e, "ReleaseSemaphore");
    }
    if (c->count > 0) c->count--;
    return env.Undefined();
  }

  Napi::Value Count(const Napi::CallbackInfo& info) {
    Core* c = Checked(info.Env());
    return Napi::Number::New(info.Env(), c->owner == g_pid ? c->count : 0);
  }
  Napi::Value IsMine(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), Mine(Checked(info.Env()))); }

  // As CPython's _GetSemaphoreValue: take a unit if there is one, give it back and
  // read the count ReleaseSemaphore reports.
  Napi::Value GetValue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core* c = Checked(env);
    DWORD r = WaitSem(c->sem, 0);
    if (r == WAIT_TIMEOUT) return Napi::Number::New(env, 0);
    if (r != 0) ThrowWin32(env, GetLastError(), "WaitForSingleObjectEx");
    LONG previous = 0;
    if (!ReleaseSemaphore(c->sem, 1, &previous)) ThrowWin32(env, GetLastError(), "ReleaseSemaphore");
    return Napi::Number::New(env, static_cast<double>(previous) + 1);
  }

  Napi::Value IsZero(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Core* c = Checked(env);
    DWORD r = WaitSem(c->sem, 0);
    if (r == WAIT_TIMEOUT) return Napi::Boolean::New(env, true);
    if (r != 0) ThrowWin32(env, GetLastError(), "WaitForSingleObjectEx");
    if (!ReleaseSemaphore(c->sem, 1, nullptr)) ThrowWin32(env, GetLastError(), "ReleaseSemaphore");
    return Napi::Boolean::New(env, false);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    DropCore();  // closed once no async waiter holds it either
    return info.Env().Undefined();
  }
  Napi::Value Name(const Napi::CallbackInfo& info) {
    if (!core_) return info.Env().Null();
    return Napi::String::New(info.Env(), core_->name);
  }
  Napi::Value GetKind(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), core_ ? core_->kind : -1); }
  Napi::Value MaxValue(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), core_ ? core_->maxvalue : 0); }
  Napi::Value Closed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !core_); }

  std::shared_ptr<Core> core_;
  int32_t slot_ = -1;
};

// Fast paths, raw N-API (node-addon-api's wrappers cost more than the semaphore).
inline Core* SlotCore(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, cbinfo, &argc, argv, nullptr, nullptr);
  int32_t h = -1;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &h) != napi_ok || h < 0 ||
      static_cast<size_t>(h) >= t_slots.size() || !t_slots[h]) {
    return nullptr;
  }
  return t_slots[h];
}

// fastAcquire(slot): true when acquired without waiting, false otherwise (the caller
// then uses SemLock.acquire, which waits, reports errors and closed semaphores).
napi_value FastAcquire(napi_env env, napi_callback_info cbinfo) {
  Core* c = SlotCore(env, cbinfo);
  bool ok = false;
  if (c) {
    if (c->kind == RECURSIVE_MUTEX && c->count > 0 && c->owner == g_pid) {
      c->count++;
      ok = true;
    } else if (WaitSem(c->sem, 0) == 0) {
      c->count++;
      c->owner = g_pid;
      ok = true;
    }
  }
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

// fastRelease(slot): 0 released; 1 released too many times; 2 RLock not owned;
// 3 closed; -errno on a system error (EINVAL: Windows errors have no errno).
napi_value FastRelease(napi_env env, napi_callback_info cbinfo) {
  Core* c = SlotCore(env, cbinfo);
  int status = 0;
  if (!c) {
    status = 3;
  } else if (c->kind == RECURSIVE_MUTEX && !(c->count > 0 && c->owner == g_pid)) {
    status = 2;
  } else if (c->kind == RECURSIVE_MUTEX && c->count > 1) {
    c->count--;
  } else if (!ReleaseSemaphore(c->sem, 1, nullptr)) {
    status = GetLastError() == ERROR_TOO_MANY_POSTS ? 1 : -EINVAL;
  } else if (c->count > 0) {
    c->count--;
  }
  napi_value result;
  napi_create_int32(env, status, &result);
  return result;
}

// Delivers grants on the JS thread: callback(ids: number[], errnos: number[]).
void OnAsync(uv_async_t* handle) {
  auto* inst = static_cast<Instance*>(handle->data);
  if (!inst || inst->dead) return;
  std::vector<Waiter*> batch;
  Lock();
  batch.swap(inst->granted);
  for (Waiter* w : batch) inst->waiters.erase(w->id);
  size_t live = inst->waiters.size();
  Unlock();
  UpdateRef(inst, live);
  if (batch.empty() || inst->callback.IsEmpty()) {
    for (Waiter* w : batch) delete w;
    return;
  }
  Napi::Env env(inst->env);
  Napi::HandleScope scope(env);
  Napi::Array ids = Napi::Array::New(env, batch.size());
  Napi::Array errs = Napi::Array::New(env, batch.size());
  for (size_t i = 0; i < batch.size(); i++) {
    Waiter* w = batch[i];
    if (w->err == 0) {
      w->core->count++;
      w->core->owner = g_pid;
    }
    ids.Set(static_cast<uint32_t>(i), Napi::Number::New(env, w->id));
    errs.Set(static_cast<uint32_t>(i), Napi::Number::New(env, w->err));
    delete w;
  }
  inst->callback.MakeCallback(env.Global(), {ids, errs});
}

Napi::Value SetSemCallback(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
  Instance* inst = GetInstance(env);
  inst->callback = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

// semUnlink(name): true. A Windows semaphore has no name to remove: it goes away
// with its last handle (as in CPython).
Napi::Value SemUnlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  return Napi::Boolean::New(env, true);
}

napi_value RawFunction(napi_env env, const char* name, napi_callback cb) {
  napi_value f = nullptr;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, nullptr, &f) != napi_ok)
    throw Napi::Error::New(env, std::string("cannot create ") + name);
  return f;
}

}  // namespace

void InitSemaphore(Napi::Env env, Napi::Object exports) {
  g_pid = GetCurrentProcessId();
  exports.Set("SemLock", SemLock::Define(env));
  exports.Set("setSemCallback", Napi::Function::New(env, SetSemCallback, "setSemCallback"));
  exports.Set("semFastAcquire", Napi::Function(env, RawFunction(env, "semFastAcquire", FastAcquire)));
  exports.Set("semFastRelease", Napi::Function(env, RawFunction(env, "semFastRelease", FastRelease)));
  exports.Set("semUnlink", Napi::Function::New(env, SemUnlink, "semUnlink"));
}

}  // namespace mp
