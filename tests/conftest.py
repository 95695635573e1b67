"""Test setup: 4 virtual CPU devices (for data-parallel tests); JAX's default float32 mode.

The suite runs in float32, the mode users run, so that the float32 products and the library's
own float64 contexts for small eigenproblems are exercised. Tests that compare against float64
oracles switch float64 on for themselves (see tests/_x64.py): the `x64` marker (on a test or a
whole module via ``pytestmark``), the `x64` fixture, or ``with enable_x64():``.
"""

import os

from _env import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(4)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.pop("JAX_ENABLE_X64", None)  # float32 by default, whatever the shell says

import contextlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from _x64 import enable_x64  # noqa: E402

__all__ = ["enable_x64"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "x64: run this test (setup, call and teardown) with jax float64 enabled"
    )
    if jax.config.jax_enable_x64:
        raise pytest.UsageError("the suite runs in float32: unset JAX_ENABLE_X64")


def _x64_context(item):
    return enable_x64() if item.get_closest_marker("x64") else contextlib.nullcontext()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _x64_context(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _x64_context(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _x64_context(item):
        return (yield)


@pytest.fixture
def x64():
    """Float64 for the duration of one test (same as the `x64` marker)."""
    with enable_x64():
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compilations():
    """Drop JAX's compilation caches after every test module. A worker runs hundreds of tests,
    and the executables, traces and constants it keeps pile up: two workers' memory grew until
    XLA failed to map new code ("Failed to materialize symbols") and numpy raised MemoryError
    in the transformer tests, late in the run. Modules rarely share shapes, so little is
    recompiled."""
    yield
    jax.clear_caches()


# The longest test files (seconds of test time each, `--durations=0`, 2026-12-08), collected
# first: xdist hands whole files to the two workers in collection order (`--dist loadfile`),
# so a long file collected last kept one worker busy minutes after the other had finished.
LONGEST_FIRST = (
    "e2e/test_spectrum.py",
    "e2e/test_continual_binary.py",
    "e2e/test_sharded.py",
    "library/test_transformer.py",
    "e2e/test_notebooks_analysis.py",
    "e2e/test_experiment_transformer.py",
    "e2e/test_multihost.py",
    "e2e/test_block_structure.py",
    "e2e/test_mask_overlap.py",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.path.as_posix()
        hits = [i for i, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)]
        return hits[0] if hits else len(LONGEST_FIRST)

    items[:] = sorted(items, key=rank)  # stable: each file's own order is kept
