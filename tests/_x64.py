"""Float64 for the tests that compare against float64 oracles.

The suite runs in JAX's default mode (float32 arrays; the library itself switches to float64
only for its small k × k eigenproblems, inside `jax.enable_x64` contexts). A test that needs
float64 end to end asks for it in one of three ways:

* a whole module: ``pytestmark = pytest.mark.x64`` (conftest enters the context around each
  test's setup, call and teardown, so module-scoped fixtures built for the module's first test
  are float64 too);
* one test: ``@pytest.mark.x64``, or the ``x64`` fixture as an argument;
* a block of code, e.g. inside a module-scoped fixture shared with float32 tests:
  ``with enable_x64(): ...`` (``from _x64 import enable_x64``).

Arrays made inside the context keep their float64 dtype, but any JAX operation on them outside
it truncates them to float32, so the whole computation of an oracle comparison (inputs, the
solver and the comparison) must run inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def enable_x64() -> Iterator[None]:
    """Context in which JAX arrays default to and may be float64 (`jax.enable_x64(True)`)."""
    with jax.enable_x64(True):
        assert jnp.zeros(()).dtype == jnp.float64  # the switch took effect
        yield


def as_float64(tree):
    """Every leaf of `tree` cast to float64 (inside an `enable_x64` context)."""
    return jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), tree)
