// Watching fds: an event-loop watcher (uv_poll) for async waits, poll() for sync ones.
#include "common.h"
#include <uv.h>
#include <poll.h>
#include <mutex>
#include <unordered_set>
#include <vector>

namespace mp {
namespace {

class FdWatcher;
// Every live FdWatcher: a forked child stops those it inherited (StopInheritedWatchers),
// and an environment that ends (the process, a worker thread) stops its own.
std::mutex g_watchers_mutex;
std::unordered_set<FdWatcher*> g_watchers;

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
    fd_ = ArgInt(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    handle_ = new uv_poll_t;
    int r = uv_poll_init(loop, handle_, fd_);
    if (r != 0) {
      delete handle_;
      handle_ = nullptr;
      throw Napi::Error::New(env, std::string("uv_poll_init: ") + uv_err_name(r) + " (" + uv_strerror(r) + ")");
    }
    handle_->data = this;
    env_ = env;
    std::lock_guard<std::mutex> lock(g_watchers_mutex);
    g_watchers.insert(this);
  }

  ~FdWatcher() override {
    Forget();
    CloseHandle();
  }

  /** In a forked child: the parent's waits must never resume there (their callbacks run the parent's code). */
  void StopInherited() { StopHandle(); }

  napi_env env() const { return env_; }

  /** The environment is ending: no callback may run any more, nor may a close callback. */
  void CloseForCleanup() {
    StopHandle();
    CloseHandle(true);
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!handle_) throw Napi::Error::New(env, "FdWatcher is closed");
    int events = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : UV_READABLE;
    int r = uv_poll_start(handle_, events, OnEvent);
    if (r != 0) throw Napi::Error::New(env, std::string("uv_poll_start: ") + uv_err_name(r));
    if (!active_) {
      active_ = true;
      Ref();  // keep the JS object alive while the loop may call back into it
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopHandle();
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    if (handle_) uv_ref(reinterpret_cast<uv_handle_t*>(handle_));
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    if (handle_) uv_unref(reinterpret_cast<uv_handle_t*>(handle_));
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    StopHandle();
    CloseHandle();
    // Closed: nothing for a forked child to stop. (Left in the set until the GC took the
    // object, closed watchers piled up, and each fork went through them all.)
    Forget();
    return info.Env().Undefined();
  }

  void Forget() {
    std::lock_guard<std::mutex> lock(g_watchers_mutex);
    g_watchers.erase(this);
  }

  void StopHandle() {
    if (handle_) uv_poll_stop(handle_);
    if (active_) {
      active_ = false;
      Unref();
    }
  }

  void CloseHandle(bool at_teardown = false) {
    if (!handle_) return;
    handle_->data = nullptr;
    auto* h = reinterpret_cast<uv_handle_t*>(handle_);
    if (at_teardown) CloseHandleAtTeardown(h);
    else uv_close(h, [](uv_handle_t* closed) { delete reinterpret_cast<uv_poll_t*>(closed); });
    handle_ = nullptr;
  }

  // With the C API: a C++ exception must not leave a libuv callback. MakeCallback runs
  // nextTicks and microtasks afterwards, like any Node callback; an error the callback
  // throws becomes an uncaught exception, as from Node's own callbacks. When JS cannot run
  // any more (an environment being torn down polls its loop once more), stop watching.
  static void OnEvent(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<FdWatcher*>(handle->data);
    if (!self) return;
    napi_env env = self->env_;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) {
      self->StopHandle();
      return;
    }
    napi_value recv = nullptr, fn = nullptr, result = nullptr, argv[2];
    bool ready = napi_get_reference_value(env, static_cast<napi_ref>(*self), &recv) == napi_ok && recv != nullptr &&
                 napi_get_reference_value(env, static_cast<napi_ref>(self->callback_), &fn) == napi_ok && fn != nullptr &&
                 napi_create_int32(env, status, &argv[0]) == napi_ok && napi_create_int32(env, events, &argv[1]) == napi_ok;
    if (!ready || napi_make_callback(env, nullptr, recv, fn, 2, argv, &result) != napi_ok) {
      bool pending = false;
      napi_value error = nullptr;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
          napi_get_and_clear_last_exception(env, &error) == napi_ok) {
        napi_fatal_exception(env, error);
      } else {
        self->StopHandle();
      }
    }
    napi_close_handle_scope(env, scope);
  }

  int fd_ = -1;
  bool active_ = false;
  uv_poll_t* handle_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::Env env_ = nullptr;
};

// pollFds(fds, timeoutMs, events=readable): the fds that are ready (readable or hung up).
// timeoutMs < 0 or null waits for ever.
Napi::Value PollFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  Napi::Array arr = info[0].As<Napi::Array>();
  int timeout = -1;
  if (info.Length() > 1 && info[1].IsNumber()) {
    double t = info[1].As<Napi::Number>().DoubleValue();
    timeout = t < 0 ? -1 : (t > 2147483647.0 ? -1 : static_cast<int>(t + 0.999));  // < 0: for ever
  }
  short events = POLLIN;
  if (info.Length() > 2 && info[2].IsNumber() && info[2].As<Napi::Number>().Int32Value() == 2) events = POLLOUT;
  std::vector<struct pollfd> pfds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    pfds[i].fd = arr.Get(i).As<Napi::Number>().Int32Value();
    pfds[i].events = events;
    pfds[i].revents = 0;
  }
  int r = RetryEintr([&] { return poll(pfds.data(), pfds.size(), timeout); });
  if (r < 0) ThrowErrno(env, errno, "poll");
  Napi::Array out = Napi::Array::New(env);
  uint32_t k = 0;
  for (auto& p : pfds)
    if (p.revents & (events | POLLHUP | POLLERR | POLLNVAL)) out.Set(k++, Napi::Number::New(env, p.fd));
  return out;
}

}  // namespace

void StopInheritedWatchers() {
  // The child has one thread: a lock held by another thread at the fork stays held here.
  std::unique_lock<std::mutex> lock(g_watchers_mutex, std::try_to_lock);
  for (FdWatcher* w : g_watchers) w->StopInherited();
}

namespace {
void StopWatchersOfEnv(void* arg) {
  napi_env env = static_cast<napi_env>(arg);
  std::vector<FdWatcher*> mine;
  {
    std::lock_guard<std::mutex> lock(g_watchers_mutex);
    for (FdWatcher* w : g_watchers) if (w->env() == env) mine.push_back(w);
  }
  for (FdWatcher* w : mine) w->CloseForCleanup();
}
}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports) {
  if (napi_add_env_cleanup_hook(env, StopWatchersOfEnv, static_cast<napi_env>(env)) != napi_ok)
    throw Napi::Error::New(env, "napi_add_env_cleanup_hook failed");
  exports.Set("FdWatcher", FdWatcher::Define(env));
  exports.Set("pollFds", Napi::Function::New(env, PollFds, "pollFds"));
}

}  // namespace mp
