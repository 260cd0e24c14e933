// shm_open shared memory: see issue "Shared memory".
#include "common.h"
namespace mp {
void InitSharedMemory(Napi::Env, Napi::Object) {}
}  // namespace mp
