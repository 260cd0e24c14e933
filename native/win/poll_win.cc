// fd watching on Windows, with the JS names of native/poll.cc. libuv's uv_poll only
// watches sockets on Windows, and anonymous pipes cannot be waited on at all, so
// FdWatcher and pollFds exist only to throw a clear error (code
// 'ERR_NOT_SUPPORTED_ON_WINDOWS'). readExact(fd, n, timeoutMs) waits for a pipe.
#include "win_util.h"

namespace mp {
namespace {

const char kNoFdWatcher[] =
    "FdWatcher: watching an fd for readiness is not supported on Windows (libuv polls only sockets there); wait "
    "with readExact(fd, n, timeoutMs) or use Node streams";
const char kNoPollFds[] =
    "pollFds: poll() on fds is not supported on Windows; wait with readExact(fd, n, timeoutMs) or use Node streams";

// new FdWatcher(fd, callback): always throws; the methods exist for the same shape.
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {InstanceMethod("start", &FdWatcher::Unsupported), InstanceMethod("stop", &FdWatcher::Unsupported),
                        InstanceMethod("ref", &FdWatcher::Unsupported), InstanceMethod("unref", &FdWatcher::Unsupported),
                        InstanceMethod("close", &FdWatcher::Unsupported)});
  }

  FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    throw NotSupportedError(info.Env(), kNoFdWatcher);
  }

 private:
  Napi::Value Unsupported(const Napi::CallbackInfo& info) { throw NotSupportedError(info.Env(), kNoFdWatcher); }
};

}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports) {
  exports.Set("FdWatcher", FdWatcher::Define(env));
  exports.Set("pollFds", NotSupportedFunction(env, "pollFds", kNoPollFds));
}

}  // namespace mp
