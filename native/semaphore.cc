// POSIX named semaphores (sem_open) for Lock/RLock/Semaphore: see issue "Synchronization".
#include "common.h"
namespace mp {
void InitSemaphore(Napi::Env, Napi::Object) {}
}  // namespace mp
