"""Python 3.13 side of bench/shared_memory.ts: prints one JSON object of ns/op."""
import json
import sys
import time
from multiprocessing import Value
from multiprocessing.shared_memory import SharedMemory


def per_op(fn, n):
    t0 = time.perf_counter_ns()
    fn(n)
    return (time.perf_counter_ns() - t0) / n


def value_increment(n):
    v = Value('i', 0)
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1
    assert v.value == n


def shm_create_unlink(n):
    for _ in range(n):
        s = SharedMemory(create=True, size=4096)
        s.close()
        s.unlink()


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    value_increment(10_000)  # warm-up
    shm_create_unlink(200)
    out = {
        "python": sys.version.split()[0],
        "value_increment_ns": per_op(value_increment, int(1_000_000 * scale)),
        "shm_create_unlink_ns": per_op(shm_create_unlink, int(5_000 * scale)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
