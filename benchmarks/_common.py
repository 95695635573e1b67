"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import time

import jax


def compile_timed(fn, *args):
    """(executable, seconds for trace + lower + compile) of jax.jit(fn) on these arguments."""
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    return exe, time.perf_counter() - start


def compiled_bytes(exe) -> int:
    """Arguments + outputs + temporaries of a compiled executable (XLA's memory analysis): the
    peak a device allocator needs for one call, deterministic, on any backend."""
    mem = exe.memory_analysis()
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


def timed_interleaved(
    calls: dict, repeats: int, warmup: int, cpu_times: dict | None = None
) -> dict[str, list[float]]:
    """Seconds per call for each name of {name: (fn, args)}: calls interleaved round-robin
    (order rotated each round, so noise hits all alike) after `warmup` calls each. When given,
    `cpu_times` is filled with the process CPU seconds (all threads) of the same calls."""
    for fn, args in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, args = calls[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    if cpu_times is not None:
        cpu_times.update(cpu)
    return times


def environment(name: str, source: str, args) -> dict:
    """Metadata heading every results JSON: benchmark, date, versions, devices, data, args."""
    return {
        "benchmark": name,
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg()[0],
        "data": source,
        "args": vars(args),
    }


def write_json(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2, default=str)
        print(f"wrote {path}")


def peak_bytes() -> tuple[int, str]:
    """(peak memory of this process in bytes, its source): the device's peak_bytes_in_use on a
    GPU, else the peak resident set (VmHWM, or ru_maxrss)."""
    dev = jax.devices()[0]
    if dev.platform == "gpu":
        return int(dev.memory_stats()["peak_bytes_in_use"]), "gpu peak_bytes_in_use"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
