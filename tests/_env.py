"""What the tests share about their environment: the repository root (README, binaries) and the
XLA flags every test process runs with (conftest.py, and the subprocesses that set their own
device count)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# LLVM at -O0: compilation dominates this suite (tiny shapes, thousands of programs), and the
# backend's optimisation level changes how fast the code runs, not what it computes.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(num_devices: int) -> str:
    """XLA_FLAGS for a test process with `num_devices` virtual CPU devices."""
    return f"--xla_force_host_platform_device_count={num_devices} {XLA_TEST_FLAGS}"
