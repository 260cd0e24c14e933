// Entry point of the N-API addon: each OS facility lives in its own file.
#include "common.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  mp::InitProcess(env, exports);
  mp::InitSocket(env, exports);
  mp::InitPoll(env, exports);
  mp::InitSemaphore(env, exports);
  mp::InitSharedMemory(env, exports);
  return exports;
}

NODE_API_MODULE(mp_native, Init)
