"""Python side of bench/sync.ts: the same measurements with multiprocessing (prints JSON)."""
import json
import multiprocessing as mp
import sys
import time


def ping_pong(a, b, rounds):
    for _ in range(rounds):
        a.acquire()
        b.release()


def bench_uncontended(n):
    lock = mp.Lock()
    acq, rel = lock.acquire, lock.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acq()
        rel()
    return (time.perf_counter_ns() - t0) / n


def bench_handoff(rounds):
    a, b = mp.Semaphore(0), mp.Semaphore(0)
    p = mp.Process(target=ping_pong, args=(a, b, rounds + 100))
    p.start()
    for _ in range(100):  # warm up
        a.release()
        b.acquire()
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        a.release()
        b.acquire()
    dt = time.perf_counter_ns() - t0
    p.join()
    return dt / rounds / 2  # one hand-off = half a round trip


def bench_value(n):
    v = mp.Value('i', 0)
    lock = v.get_lock()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        with lock:
            v.value += 1
    return (time.perf_counter_ns() - t0) / n


if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    out = {
        'version': sys.version.split()[0],
        'uncontended_sync_ns': min(bench_uncontended(n) for _ in range(3)),
        'handoff_ns': bench_handoff(rounds),
        'value_increment_ns': min(bench_value(n // 4) for _ in range(3)),
    }
    print(json.dumps(out))
