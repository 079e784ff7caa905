"""Fair timing on a small shared machine: one process per contestant, rotating turns.

PyTorch's OpenMP threads and XLA's thread pool slow each other down badly when
they share a process, so every contestant runs in its own (spawned) process
and waits on a pipe while the others run. The processes take turns, the order
rotated each round (A B C, B C A, ...), so a busy spell of the host slows them
alike; ``wait_idle`` starts each turn only once the CPUs are nearly idle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from typing import Any, Callable


def busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of all CPUs' time spent busy over ``seconds`` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(threshold: float, timeout: float = 120.0) -> bool:
    """Block until the machine is nearly idle (our workers wait on their pipes); False on timeout."""
    end = time.time() + timeout
    while time.time() < end:
        if busy_fraction() < threshold:
            return True
    return False


def _worker(conn, builder: Callable[..., Callable[[], Any]], args: tuple, env: dict[str, str]) -> None:
    os.environ.update(env)
    run = builder(*args)
    t = time.perf_counter()
    run()                      # compile and warm up
    run()
    conn.send(time.perf_counter() - t)
    while True:
        n = conn.recv()
        if n is None:
            break
        times = []
        for _ in range(n):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        conn.send(times)


def race(contestants: dict[str, tuple[Callable[..., Callable[[], Any]], tuple]], *, rounds: int,
         calls: int = 1, idle: float = 0.0, env: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contestant's ``run()``, one median per round.

    ``contestants``: name -> (builder, args); ``builder(*args)`` runs in the
    worker process and returns ``run``, a function that does one timed unit
    of work and blocks until it is done.
    """
    ctx = mp.get_context("spawn")
    workers = {}
    for name, (builder, args) in contestants.items():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, builder, args, env or {}), daemon=True)
        proc.start()
        workers[name] = (parent, proc)
    for parent, _ in workers.values():
        parent.recv()
    names = list(contestants)
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if idle:
                wait_idle(idle)
            workers[name][0].send(calls)
            seconds[name].append(statistics.median(workers[name][0].recv()))
    for parent, proc in workers.values():
        parent.send(None)
        proc.join()
    return seconds
