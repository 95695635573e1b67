"""Test setup: 4 virtual CPU devices (for data-parallel tests) and float64 available.

Oracles run in float64; tests of float32 behaviour ask for float32 arrays explicitly.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
