// POSIX named semaphores (sem_open) for Lock/RLock/Semaphore (CPython's
// Modules/_multiprocessing/semaphore.c), plus async waits that do not use the
// libuv threadpool.
//
// Async waits: a semaphore with pending async waiters in this process gets one
// waiter thread of its own (not one per waiter, and not a threadpool thread). It
// blocks in sem_timedwait in slices, takes one unit per waiter in FIFO order and
// hands it to the event loop through a uv_async_t. The thread lingers briefly once
// its queue is empty (on a condition variable, not on the semaphore) and then ends.
// A fork()ed child has none of these threads: an atfork handler resets the state
// and threads are created again on demand there.
//
// Ownership (for RLock and Condition) is per process, as CPython's is per thread:
// `count` and `owner` live in the object of each process; a child that inherited
// an object through fork() starts with count 0 (the owner pid differs).
#include "common.h"
#include <uv.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <algorithm>
#include <climits>
#include <deque>
#include <memory>
#include <random>
#include <unordered_map>
#include <vector>

namespace mp {
namespace {

enum Kind { RECURSIVE_MUTEX = 0, SEMAPHORE = 1 };

constexpr long kSliceNs = 20 * 1000 * 1000;  // a waiter thread re-checks its queue this often
constexpr long kLingerMs = 200;              // an idle waiter thread waits this long for new work

pid_t g_pid = 0;
pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;  // new work for idle waiter threads
uint64_t g_generation = 1;                        // bumped in every fork()ed child

struct Instance;
struct Core;

struct Waiter {
  uint32_t id = 0;
  std::shared_ptr<Core> core;
  std::shared_ptr<Core> post_on_success;  // posted by the waiter thread as soon as it acquires
  Instance* inst = nullptr;
  int err = 0;
  bool granted = false;
};

struct Core {
  sem_t* sem = SEM_FAILED;
  int kind = SEMAPHORE;
  int maxvalue = 1;
  std::string name;
  // Touched by the JS thread only.
  int count = 0;
  pid_t owner = 0;
  // Guarded by g_mu.
  std::deque<Waiter*> queue;
  bool thread_running = false;
  uint64_t generation = 0;
  ~Core() {
    if (sem != SEM_FAILED) sem_close(sem);
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

void AtforkPrepare() { pthread_mutex_lock(&g_mu); }
void AtforkParent() { pthread_mutex_unlock(&g_mu); }
void AtforkChild() {
  // The waiter threads do not exist here; the state they guarded belongs to the parent.
  pthread_mutex_init(&g_mu, nullptr);
  pthread_cond_init(&g_cv, nullptr);
  g_pid = getpid();
  g_generation++;
  for (Instance* inst : g_instances) {
    inst->granted.clear();  // the parent's waiters: leaked on purpose (a few bytes)
    inst->waiters.clear();
    if (inst->async && inst->refed) uv_unref(reinterpret_cast<uv_handle_t*>(inst->async));
    inst->refed = false;
  }
}

// With g_mu held: forget waiter state inherited from a parent process.
void FreshenLocked(Core* core) {
  if (core->generation != g_generation) {
    core->queue.clear();
    core->thread_running = false;
    core->generation = g_generation;
  }
}

timespec Deadline(double ms) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double whole = ms < 0 ? 0 : ms;
  long long ns = static_cast<long long>(whole * 1e6);
  ts.tv_sec += static_cast<time_t>(ns / 1000000000LL);
  ts.tv_nsec += static_cast<long>(ns % 1000000000LL);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec += 1;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

#ifdef __APPLE__
// macOS has no sem_timedwait: poll with a growing sleep, as CPython does.
int TimedWait(sem_t* sem, const timespec* deadline) {
  long delay_us = 0;
  for (;;) {
    if (sem_trywait(sem) == 0) return 0;
    if (errno != EAGAIN) return -1;
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec)) {
      errno = ETIMEDOUT;
      return -1;
    }
    long left_us = (deadline->tv_sec - now.tv_sec) * 1000000L + (deadline->tv_nsec - now.tv_nsec) / 1000;
    delay_us = std::min(std::min(delay_us + 1000, 20000L), left_us);
    usleep(static_cast<useconds_t>(delay_us));
  }
}
#else
int TimedWait(sem_t* sem, const timespec* deadline) { return sem_timedwait(sem, deadline); }
#endif

void PostAsyncLocked(Instance* inst) {
  if (!inst->dead && inst->async) uv_async_send(inst->async);
}

// The waiter thread of one semaphore.
void* WaiterThread(void* arg) {
  auto* holder = static_cast<std::shared_ptr<Core>*>(arg);
  std::shared_ptr<Core> core = *holder;
  delete holder;
  pthread_mutex_lock(&g_mu);
  const uint64_t gen = g_generation;
  for (;;) {
    if (gen != g_generation) break;  // cannot happen in this process, but be safe
    if (core->queue.empty()) {
      // Linger for new work without touching the semaphore (no stolen units).
      timespec until = Deadline(kLingerMs);
      while (core->queue.empty()) {
        if (pthread_cond_timedwait(&g_cv, &g_mu, &until) == ETIMEDOUT) break;
      }
      if (core->queue.empty()) break;
    }
    pthread_mutex_unlock(&g_mu);
    timespec slice = Deadline(kSliceNs / 1e6);
    int r = TimedWait(core->sem, &slice);
    int err = r == 0 ? 0 : errno;
    pthread_mutex_lock(&g_mu);
    if (r != 0 && (err == ETIMEDOUT || err == EINTR || err == EAGAIN)) continue;
    if (core->queue.empty()) {
      if (r == 0) sem_post(core->sem);  // every waiter left meanwhile: give the unit back
      continue;
    }
    Waiter* w = core->queue.front();
    core->queue.pop_front();
    w->granted = true;
    w->err = r == 0 ? 0 : err;
    if (r == 0 && w->post_on_success) sem_post(w->post_on_success->sem);
    w->inst->granted.push_back(w);
    PostAsyncLocked(w->inst);
    if (r != 0) {
      // A broken semaphore: fail every waiter rather than spin.
      for (Waiter* o : core->queue) {
        o->granted = true;
        o->err = err;
        o->inst->granted.push_back(o);
        PostAsyncLocked(o->inst);
      }
      core->queue.clear();
    }
  }
  core->thread_running = false;
  pthread_mutex_unlock(&g_mu);
  return nullptr;
}

// With g_mu held.
int EnsureThreadLocked(const std::shared_ptr<Core>& core) {
  if (core->thread_running) {
    pthread_cond_broadcast(&g_cv);
    return 0;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  auto* holder = new std::shared_ptr<Core>(core);
  pthread_t t;
  int r = pthread_create(&t, &attr, WaiterThread, holder);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    delete holder;
    return r;
  }
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
  pthread_mutex_lock(&g_mu);
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
  pthread_mutex_unlock(&g_mu);
  i->callback.Reset();
  if (i->async) CloseHandleAtTeardown(reinterpret_cast<uv_handle_t*>(i->async));
  i->async = nullptr;
}

// Not napi instance data: that slot belongs to the whole addon.
Instance* GetInstance(Napi::Env env) {
  napi_env raw = env;
  pthread_mutex_lock(&g_mu);
  for (Instance* i : g_instances) {
    if (i->env == raw && !i->dead) {
      pthread_mutex_unlock(&g_mu);
      return i;
    }
  }
  auto* inst = new Instance();
  inst->env = raw;
  g_instances.push_back(inst);
  pthread_mutex_unlock(&g_mu);
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
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ (static_cast<uint64_t>(getpid()) << 32));
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789_";
  std::string s = prefix;
  for (int i = 0; i < 8; i++) s += alphabet[rng() % (sizeof alphabet - 1)];
  return s;
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
                        StaticValue("SEM_VALUE_MAX", Napi::Number::New(env, SemValueMax()))});
  }

  static int SemValueMax() {
#ifdef SEM_VALUE_MAX
    return SEM_VALUE_MAX;
#else
    return INT_MAX;
#endif
  }

  // new SemLock(kind, value, maxvalue, prefixOrName, create)
  //   create=true: a new semaphore named prefix + 8 random characters (O_EXCL);
  //   create=false: opens the existing semaphore `name`.
  SemLock(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SemLock>(info) {
    Napi::Env env = info.Env();
    int kind = ArgInt(info, 0, "kind");
    int value = ArgInt(info, 1, "value");
    int maxvalue = ArgInt(info, 2, "maxvalue");
    if (kind != RECURSIVE_MUTEX && kind != SEMAPHORE) throw Napi::RangeError::New(env, "unknown semaphore kind");
    if (value < 0 || value > SemValueMax()) throw Napi::RangeError::New(env, "semaphore value out of range");
    if (info.Length() < 4 || !info[3].IsString()) throw Napi::TypeError::New(env, "name must be a string");
    std::string name = info[3].As<Napi::String>().Utf8Value();
    bool create = ArgBool(info, 4, true);
    core_ = std::make_shared<Core>();
    core_->kind = kind;
    core_->maxvalue = maxvalue;
    core_->generation = g_generation;
    if (create) {
      for (int attempt = 0;; attempt++) {
        std::string candidate = RandomName(name);
        sem_t* s = sem_open(candidate.c_str(), O_CREAT | O_EXCL, 0600, static_cast<unsigned>(value));
        if (s != SEM_FAILED) {
          core_->sem = s;
          core_->name = candidate;
          break;
        }
        if (errno != EEXIST || attempt > 100) ThrowErrno(env, errno, "sem_open");
      }
    } else {
      sem_t* s = sem_open(name.c_str(), 0);
      if (s == SEM_FAILED) ThrowErrno(env, errno, "sem_open");
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
    // Waiters hold their own reference to the core; the semaphore closes with the last one.
    if (slot_ >= 0) {
      t_slots[slot_] = nullptr;
      t_free_slots.push_back(slot_);
      slot_ = -1;
    }
    core_.reset();
  }

  Core* core() { return core_.get(); }
  const std::shared_ptr<Core>& shared() { return core_; }

 private:
  Core* Checked(Napi::Env env) {
    if (!core_ || core_->sem == SEM_FAILED) throw Napi::Error::New(env, "the semaphore is closed");
    Core* c = core_.get();
    if (c->count > 0 && c->owner != g_pid) c->count = 0;  // inherited through fork()
    return c;
  }

  static bool Mine(Core* c) { return c->count > 0 && c->owner == g_pid; }

  // Takes a unit the waiter thread acquired for an async waiter of this process that
  // JS has not seen yet: the sync caller gets it, the waiter queues again at the front.
  // Without this, a blocking sync acquire could wait for ever for its own process.
  bool TrySteal(Napi::Env env) {
    Instance* inst = GetInstance(env);
    bool stolen = false;
    pthread_mutex_lock(&g_mu);
    for (auto it = inst->granted.begin(); it != inst->granted.end(); ++it) {
      Waiter* w = *it;
      if (w->core.get() == core_.get() && w->err == 0 && !w->post_on_success) {
        inst->granted.erase(it);
        w->granted = false;
        FreshenLocked(core_.get());
        core_->queue.push_front(w);
        EnsureThreadLocked(core_);
        stolen = true;
        break;
      }
    }
    pthread_mutex_unlock(&g_mu);
    return stolen;
  }

  bool HasLocalWaiters() {
    pthread_mutex_lock(&g_mu);
    FreshenLocked(core_.get());
    bool any = !core_->queue.empty();
    pthread_mutex_unlock(&g_mu);
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
    if (sem_trywait(c->sem) == 0) {
      Acquired(c);
      return Napi::Boolean::New(env, true);
    }
    if (errno != EAGAIN && errno != EINTR) ThrowErrno(env, errno, "sem_trywait");
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
    timespec deadline = Deadline(timeout < 0 ? 0 : timeout);
    for (;;) {
      int r;
      if (sliced) {
        timespec slice = Deadline(5);
        bool last = timeout >= 0 && (slice.tv_sec > deadline.tv_sec ||
                                     (slice.tv_sec == deadline.tv_sec && slice.tv_nsec >= deadline.tv_nsec));
        r = TimedWait(c->sem, last ? &deadline : &slice);
        if (r != 0 && errno == ETIMEDOUT && !last) {
          if (TrySteal(env)) break;
          continue;
        }
      } else if (timeout < 0) {
        r = sem_wait(c->sem);
      } else {
        r = TimedWait(c->sem, &deadline);
      }
      if (r == 0) break;
      if (errno == EINTR) continue;
      if (errno == ETIMEDOUT) return Napi::Boolean::New(env, false);
      ThrowErrno(env, errno, timeout < 0 ? "sem_wait" : "sem_timedwait");
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
      if (!other || !other->core_ || other->core_->sem == SEM_FAILED) throw Napi::TypeError::New(env, "postOnSuccess must be an open SemLock");
      post = other->core_;
    }
    if (c->kind == RECURSIVE_MUTEX && Mine(c)) {
      c->count++;
      return Napi::Boolean::New(env, true);
    }
    if (sem_trywait(c->sem) == 0) {
      Acquired(c);
      if (post) sem_post(post->sem);
      return Napi::Boolean::New(env, true);
    }
    if (errno != EAGAIN && errno != EINTR) ThrowErrno(env, errno, "sem_trywait");
    Instance* inst = GetInstance(env);
    if (inst->callback.IsEmpty()) throw Napi::Error::New(env, "setSemCallback() was not called");
    EnsureAsync(env, inst);
    auto* w = new Waiter();
    w->id = id;
    w->core = core_;
    w->post_on_success = post;
    w->inst = inst;
    pthread_mutex_lock(&g_mu);
    FreshenLocked(c);
    c->queue.push_back(w);
    inst->waiters[id] = w;
    int r = EnsureThreadLocked(core_);
    if (r != 0) {
      c->queue.pop_back();
      inst->waiters.erase(id);
      pthread_mutex_unlock(&g_mu);
      delete w;
      ThrowErrno(env, r, "pthread_create");
    }
    size_t live = inst->waiters.size();
    pthread_mutex_unlock(&g_mu);
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
    pthread_mutex_lock(&g_mu);
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
    pthread_mutex_unlock(&g_mu);
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
    } else {
#ifndef __APPLE__
      int sval = 0;
      if (sem_getvalue(c->sem, &sval) < 0) ThrowErrno(env, errno, "sem_getvalue");
      if (sval >= c->maxvalue) {
        Napi::Error e = Napi::RangeError::New(env, "semaphore or lock released too many times");
        e.Set("code", Napi::String::New(env, "ERR_RELEASED_TOO_MANY_TIMES"));
        throw e;
      }
#else
      // macOS: no sem_getvalue; like CPython, try to tell with a trywait.
      if (c->maxvalue == 1) {
        if (sem_trywait(c->sem) == 0) {
          sem_post(c->sem);
          Napi::Error e = Napi::RangeError::New(env, "semaphore or lock released too many times");
          e.Set("code", Napi::String::New(env, "ERR_RELEASED_TOO_MANY_TIMES"));
          throw e;
        }
      }
#endif
    }
    if (sem_post(c->sem) < 0) ThrowErrno(env, errno, "sem_post");
    if (c->count > 0) c->count--;
    return env.Undefined();
  }

  Napi::Value Count(const Napi::CallbackInfo& info) {
    Core* c = Checked(info.Env());
    return Napi::Number::New(info.Env(), c->owner == g_pid ? c->count : 0);
  }
  Napi::Value IsMine(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), Mine(Checked(info.Env()))); }
  Napi::Value GetValue(const Napi::CallbackInfo& info) {
    Core* c = Checked(info.Env());
#ifdef __APPLE__
    throw Napi::Error::New(info.Env(), "sem_getvalue is not implemented on macOS");
#else
    int sval = 0;
    if (sem_getvalue(c->sem, &sval) < 0) ThrowErrno(info.Env(), errno, "sem_getvalue");
    return Napi::Number::New(info.Env(), sval < 0 ? 0 : sval);  // some systems report -waiters
#endif
  }
  Napi::Value IsZero(const Napi::CallbackInfo& info) {
    Core* c = Checked(info.Env());
    if (sem_trywait(c->sem) == 0) {
      sem_post(c->sem);
      return Napi::Boolean::New(info.Env(), false);
    }
    return Napi::Boolean::New(info.Env(), true);
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
  Core* c = t_slots[h];
  if (c->count > 0 && c->owner != g_pid) c->count = 0;  // inherited through fork()
  return c;
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
    } else if (sem_trywait(c->sem) == 0) {
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
// 3 closed; -errno on a system error.
napi_value FastRelease(napi_env env, napi_callback_info cbinfo) {
  Core* c = SlotCore(env, cbinfo);
  int status = 0;
  if (!c) {
    status = 3;
  } else if (c->kind == RECURSIVE_MUTEX) {
    if (!(c->count > 0 && c->owner == g_pid)) status = 2;
    else if (c->count > 1) c->count--;
    else if (sem_post(c->sem) < 0) status = -errno;
    else c->count--;
  } else {
#ifndef __APPLE__
    int sval = 0;
    if (sem_getvalue(c->sem, &sval) < 0) status = -errno;
    else if (sval >= c->maxvalue) status = 1;
#else
    if (c->maxvalue == 1 && sem_trywait(c->sem) == 0) {
      sem_post(c->sem);
      status = 1;
    }
#endif
    if (status == 0) {
      if (sem_post(c->sem) < 0) status = -errno;
      else if (c->count > 0) c->count--;
    }
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
  pthread_mutex_lock(&g_mu);
  batch.swap(inst->granted);
  for (Waiter* w : batch) inst->waiters.erase(w->id);
  size_t live = inst->waiters.size();
  pthread_mutex_unlock(&g_mu);
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

Napi::Value SemUnlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (sem_unlink(name.c_str()) < 0) {
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    ThrowErrno(env, errno, "sem_unlink");
  }
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitSemaphore(Napi::Env env, Napi::Object exports) {
  static bool once = false;
  if (!once) {
    once = true;
    g_pid = getpid();
    pthread_atfork(AtforkPrepare, AtforkParent, AtforkChild);
  }
  exports.Set("SemLock", SemLock::Define(env));
  exports.Set("setSemCallback", Napi::Function::New(env, SetSemCallback, "setSemCallback"));
  exports.Set("semFastAcquire", Napi::Function(env, [&] {
                napi_value f;
                napi_create_function(env, "semFastAcquire", NAPI_AUTO_LENGTH, FastAcquire, nullptr, &f);
                return f;
              }()));
  exports.Set("semFastRelease", Napi::Function(env, [&] {
                napi_value f;
                napi_create_function(env, "semFastRelease", NAPI_AUTO_LENGTH, FastRelease, nullptr, &f);
                return f;
              }()));
  exports.Set("semUnlink", Napi::Function::New(env, SemUnlink, "semUnlink"));
}

}  // namespace mp
