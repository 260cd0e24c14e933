// Parks the V8 platform's worker threads around fork() (FORK.md item 5).
// Uses Node's C++ embedder API, which is not ABI-stable: this file is built into
// its own addon, once per Node version. The N-API addon calls these hooks via dlsym.
#include <node.h>
#include <v8-platform.h>
#include <v8-microtask-queue.h>
#include <v8-context.h>
#include <cerrno>
#include <ctime>
#include <memory>
#include <semaphore.h>

namespace {

node::MultiIsolatePlatform* platform = nullptr;
sem_t arrived;     // posted by each worker thread once it is parked
sem_t released;    // posted by the main thread to let the parked workers go
int parked = 0;    // workers currently parked (parent side)
int stale = 0;     // park tasks from a timed-out or cancelled attempt that have not arrived yet
int posted = 0;    // park tasks posted ahead by mp_park_begin, not yet waited for
bool threads_gone = false;  // true in a forked child: the workers do not exist there

class ParkTask : public v8::Task {
 public:
  void Run() override {
    sem_post(&arrived);
    while (sem_wait(&released) == -1 && errno == EINTR) {}
  }
};

bool WaitUntil(sem_t* s, const struct timespec* deadline) {
  for (;;) {
    if (sem_timedwait(s, deadline) == 0) return true;
    if (errno != EINTR) return false;
  }
}

}  // namespace

extern "C" {

// Posts the park tasks ahead of mp_park_threads, so that the workers wake and park while
// the main thread still prepares the fork (their wake-ups took ~0.1 ms of each fork).
__attribute__((visibility("default"))) void mp_park_begin() {
  if (platform == nullptr || threads_gone || posted > 0 || parked > 0 || stale > 0) return;
  int n = platform->NumberOfWorkerThreads();
  for (int i = 0; i < n; i++) platform->CallOnWorkerThread(std::make_unique<ParkTask>());
  posted = n;
}

// The fork mp_park_begin prepared will not happen: the tasks pass straight through.
__attribute__((visibility("default"))) void mp_park_cancel() {
  for (int i = 0; i < posted; i++) sem_post(&released);
  stale += posted;
  posted = 0;
}

// Blocks until every platform worker thread is parked inside a ParkTask.
// Returns the number parked, or -errno (ETIMEDOUT if a worker stayed busy).
__attribute__((visibility("default"))) int mp_park_threads(int timeout_ms) {
  if (platform == nullptr || threads_gone) return 0;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
  while (stale > 0) {
    if (!WaitUntil(&arrived, &deadline)) return -ETIMEDOUT;
    stale--;
  }
  // Node counts its delayed-task scheduler thread among the "worker threads"
  // (node_platform.cc pushes it into threads_), and that thread never runs tasks:
  // n - 1 tasks must arrive; an n-th one is taken if it is already there.
  if (posted == 0) mp_park_begin();
  int n = posted;
  posted = 0;
  int must = n > 0 ? n - 1 : 0;
  int got = 0;
  for (; got < must; got++) {
    if (!WaitUntil(&arrived, &deadline)) {
      // Let the ones that parked go, and let the late ones pass straight through.
      for (int j = 0; j < n; j++) sem_post(&released);
      stale = n - got;
      return -ETIMEDOUT;
    }
  }
  if (got < n && sem_trywait(&arrived) == 0) got++;
  stale = n - got;   // tasks still queued: they pass through once released
  parked = n;        // release tokens for every task posted
  return got;
}

__attribute__((visibility("default"))) void mp_unpark_threads() {
  for (int i = 0; i < parked; i++) sem_post(&released);
  parked = 0;
}

// In the child: the worker threads were not copied; never wait for them again.
__attribute__((visibility("default"))) void mp_park_after_fork_child() {
  threads_gone = true;
  parked = 0;
  stale = 0;
  posted = 0;
  sem_init(&arrived, 0, 0);
  sem_init(&released, 0, 0);
}

}  // extern "C"

static void WorkerCount(const v8::FunctionCallbackInfo<v8::Value>& args) {
  int n = platform && !threads_gone ? platform->NumberOfWorkerThreads() : 0;
  args.GetReturnValue().Set(n);
}

// True while V8 runs microtasks (a promise continuation): a fork there would leave
// the child unable to run its own promises (PopenFork in src/popen_fork.ts defers it).
static void InMicrotask(const v8::FunctionCallbackInfo<v8::Value>& args) {
  v8::Isolate* isolate = args.GetIsolate();
  v8::MicrotaskQueue* queue = isolate->GetCurrentContext()->GetMicrotaskQueue();
  args.GetReturnValue().Set(queue != nullptr && queue->IsRunningMicrotasks());
}

NODE_MODULE_INIT(/* exports, module, context */) {
  if (platform == nullptr) {
    node::Environment* env = node::GetCurrentEnvironment(context);
    platform = node::GetMultiIsolatePlatform(env);
    sem_init(&arrived, 0, 0);
    sem_init(&released, 0, 0);
  }
  v8::Isolate* isolate = v8::Isolate::GetCurrent();  // Context::GetIsolate is gone in V8 14
  v8::Local<v8::Function> fn = v8::Function::New(context, WorkerCount).ToLocalChecked();
  exports->Set(context, v8::String::NewFromUtf8Literal(isolate, "workerCount"), fn).Check();
  v8::Local<v8::Function> in_microtask = v8::Function::New(context, InMicrotask).ToLocalChecked();
  exports->Set(context, v8::String::NewFromUtf8Literal(isolate, "inMicrotask"), in_microtask).Check();
}
