"""Python 3.13 side of bench/connection.ts: Pipe round trip and send_bytes echo throughput.
Prints JSON: {version, rtt_ns, echo: {size: MB/s}, echo_into: {size: MB/s}}."""
import json
import sys
import time
import multiprocessing as mp


def echo(conn):
    while True:
        b = conn.recv_bytes()
        if not b:
            break
        conn.send_bytes(b)


def echo_into(conn, capacity):
    buf = bytearray(capacity)
    while True:
        n = conn.recv_bytes_into(buf)
        if n == 0:
            break
        conn.send_bytes(buf, 0, n)


def echo_throughput(sizes, into):
    capacity = max(sizes)
    a, b = mp.Pipe()
    p = mp.Process(target=echo_into if into else echo, args=(b, capacity) if into else (b,))
    p.start()
    mine = bytearray(capacity)
    recv = (lambda: a.recv_bytes_into(mine)) if into else a.recv_bytes
    res = {}
    for size in sizes:
        data = b'x' * size
        reps = max(3, min(2000, (256 << 20) // size // 2))
        a.send_bytes(data); recv()
        dt = float('inf')
        for _ in range(3):  # best of 3 rounds, as the Node side
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                a.send_bytes(data); recv()
            dt = min(dt, (time.perf_counter_ns() - t0) / 1e9)
        res[str(size)] = 2 * size * reps / dt / 1e6
    a.send_bytes(b'')
    p.join()
    return res


def echo_obj(conn):
    while True:
        o = conn.recv()
        if o is None:
            break
        conn.send(o)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    sizes = [int(s) for s in sys.argv[2].split(',')] if len(sys.argv) > 2 else [1024, 65536, 1 << 20, 16 << 20]
    a, b = mp.Pipe()
    p = mp.Process(target=echo_obj, args=(b,))
    p.start()
    obj = {'id': 1, 'name': 'small', 'values': [1, 2, 3]}
    for _ in range(1000):
        a.send(obj); a.recv()
    best = float('inf')
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            a.send(obj); a.recv()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    a.send(None)
    p.join()
    res = echo_throughput(sizes, False)
    res_into = echo_throughput(sizes, True)
    print(json.dumps({'version': sys.version.split()[0], 'start_method': mp.get_start_method(), 'rtt_ns': best, 'echo': res, 'echo_into': res_into}))


if __name__ == '__main__':
    main()
