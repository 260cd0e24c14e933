"""Python 3.13's side of bench/process_start: start -> target running, start -> join."""
import json
import multiprocessing as mp
import sys
import time


WARM_UP_STARTS = 10  # as bench/process_start.ts


def stamp(slot):
    slot.value = time.monotonic_ns()


def measure(method, runs):
    ctx = mp.get_context(method)
    slot = ctx.Value('q', 0, lock=False)
    for _ in range(WARM_UP_STARTS):
        warm = ctx.Process(target=stamp, args=(slot,))
        warm.start()
        warm.join()
    running, joined = [], []
    for _ in range(runs):
        slot.value = 0
        t0 = time.monotonic_ns()
        p = ctx.Process(target=stamp, args=(slot,))
        p.start()
        p.join()
        t2 = time.monotonic_ns()
        assert p.exitcode == 0 and slot.value
        running.append((slot.value - t0) / 1e6)
        joined.append((t2 - t0) / 1e6)
    name = f"python3.13 '{method}'" + (" (warm)" if method == "forkserver" else "")
    return {"name": name, "running": running, "joined": joined}


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    print(json.dumps([measure(m, runs) for m in ("fork", "forkserver", "spawn")]))
