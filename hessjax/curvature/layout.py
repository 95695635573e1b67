"""Flat views of (a selected subset of) a parameter pytree.

A `ParamLayout` is static and hashable: it records the tree structure, leaf shapes, dtypes,
path names and which leaves are selected. Flat vectors cover the selected leaves only, in
`jax.tree_util` leaf order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax._arrays import concat

Array = jax.Array
PyTree = Any
Select = None | str | Sequence[str] | Callable[[str], bool]


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree: PyTree) -> list[str]:
    """'/'-joined path of every leaf, e.g. 'params/Dense_0/kernel', in leaf order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(_key_name(k) for k in path) for path, _ in flat]


def _matches(path: str, pattern: str) -> bool:
    parts, want = path.split("/"), pattern.strip("/").split("/")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def select_mask(paths: Sequence[str], select: Select) -> tuple[bool, ...]:
    """Which leaves `select` picks: None (all), a path pattern such as 'Dense_0' or
    'Dense_0/kernel' (matched as whole path components), a list of patterns, or a predicate
    on the path string."""
    if select is None:
        return tuple(True for _ in paths)
    if callable(select):
        return tuple(bool(select(p)) for p in paths)
    patterns = [select] if isinstance(select, str) else list(select)
    return tuple(any(_matches(p, pat) for pat in patterns) for p in paths)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """How a params pytree maps to flat vectors: its treedef, every leaf's shape, dtype and
    '/'-joined path, and which leaves are selected (a restriction to a block). `size` is the
    number of selected entries n; `ravel` maps a params-shaped tree to the (n,) vector of its
    selected leaves (leaf order, row-major within a leaf) and `unravel` back (zeros elsewhere)."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    paths: tuple[str, ...]
    selected: tuple[bool, ...]

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s, on in zip(self.shapes, self.selected, strict=True) if on)

    @property
    def dtype(self) -> np.dtype:
        return next(d for d, on in zip(self.dtypes, self.selected, strict=True) if on)

    @property
    def selected_paths(self) -> tuple[str, ...]:
        return tuple(p for p, on in zip(self.paths, self.selected, strict=True) if on)

    def leaves(self, params: PyTree) -> list[Array]:
        return self.treedef.flatten_up_to(params)

    def pick(self, leaves: Sequence[Array]) -> list[Array]:
        """The selected leaves of a full leaf list."""
        return [x for x, on in zip(leaves, self.selected, strict=True) if on]

    def merge(self, picked: Sequence[Array], leaves: Sequence[Array]) -> PyTree:
        """Params tree with the selected leaves replaced by `picked`."""
        it = iter(picked)
        return self.treedef.unflatten(
            [next(it) if on else x for x, on in zip(leaves, self.selected, strict=True)]
        )

    def ravel_picked(self, picked: Sequence[Array]) -> Array:
        return concat([jnp.ravel(x) for x in picked])

    def unravel_picked(self, flat: Array) -> list[Array]:
        _checks.check_operand(flat, self.size, (1,))
        picked = [
            (s, d) for s, d, on in zip(self.shapes, self.dtypes, self.selected, strict=True) if on
        ]
        sizes = np.cumsum([int(np.prod(s)) for s, _ in picked])[:-1]
        pieces = jnp.split(flat, sizes)
        return [x.reshape(s).astype(d) for x, (s, d) in zip(pieces, picked, strict=True)]

    def unravel(self, flat: Array) -> PyTree:
        """(size,) -> params-shaped tree; unselected leaves are zeros."""
        zeros = [jnp.zeros(s, d) for s, d in zip(self.shapes, self.dtypes, strict=True)]
        return self.merge(self.unravel_picked(flat), zeros)

    def ravel(self, tree: PyTree) -> Array:
        """Params-shaped tree -> (size,) flat vector of its selected leaves."""
        treedef = jax.tree_util.tree_structure(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"vector tree structure does not match the params:\n{treedef}\nvs\n{self.treedef}"
            )
        leaves = jax.tree_util.tree_leaves(tree)
        for x, s, d, p in zip(leaves, self.shapes, self.dtypes, self.paths, strict=True):
            if tuple(x.shape) != s or x.dtype != d:
                raise ValueError(
                    f"leaf {p!r}: got {x.dtype}{list(x.shape)}, params have {d}{list(s)}"
                )
        return self.ravel_picked(self.pick(leaves))


def _leaf_dtype(x: Any, path: str) -> np.dtype:
    try:
        return np.dtype(jnp.result_type(x))
    except TypeError:
        raise ValueError(
            f"params leaf {path!r} is a {type(x).__name__} ({x!r:.40}), not a numeric array; "
            "keep names, settings and keys out of params (in a closure or a static field)"
        ) from None


def make_layout(params: PyTree, select: Select = None) -> ParamLayout:
    """Layout of `params` restricted to the leaves chosen by `select` (see `select_mask`).

    Every leaf must be a numeric array or scalar; the selected ones must share one floating
    dtype (integer leaves such as a step counter are fine when `select` leaves them out).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise ValueError("params has no array leaves")
    paths = tuple(leaf_paths(params))
    mask = select_mask(paths, select)
    if not any(mask):
        raise ValueError(f"select={select!r} matches no parameter; paths are {list(paths)}")
    dtypes = tuple(_leaf_dtype(x, p) for x, p in zip(leaves, paths, strict=True))
    for d, p, on in zip(dtypes, paths, mask, strict=True):
        if on and not jnp.issubdtype(d, jnp.floating):
            raise ValueError(
                f"params leaf {p!r} has dtype {d}; curvature needs floating parameters: "
                "leave it out with select= (e.g. select=lambda path: 'step' not in path) or "
                "keep it outside params"
            )
    chosen = {d for d, on in zip(dtypes, mask, strict=True) if on}
    if len(chosen) != 1:
        raise ValueError(
            f"selected params must share one floating dtype, got {sorted(map(str, chosen))}"
        )
    shapes = tuple(tuple(np.shape(x)) for x in leaves)
    return ParamLayout(treedef, shapes, dtypes, paths, mask)


HALF_PRECISION = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


def vector_dtype(layout: ParamLayout) -> np.dtype:
    """dtype of an operator's flat vectors: the params' dtype, or float32 for bfloat16 /
    float16 params (products then run in the params' dtype, Krylov vectors in float32)."""
    return np.dtype(np.float32) if layout.dtype in HALF_PRECISION else layout.dtype


def check_precision(layout: ParamLayout) -> None:
    """Kronecker factors need float32 or float64 parameters."""
    if layout.dtype in HALF_PRECISION:
        raise ValueError(
            f"params are {layout.dtype}: Kronecker factors in half precision are not supported;"
            " cast params to float32, e.g. "
            "jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)"
        )


def group_by_prefix(params: PyTree, depth: int = 1, skip: Sequence[str] = ("params",)) -> list[str]:
    """Distinct path prefixes of `depth` components (after dropping leading `skip` components),
    in leaf order, e.g. the layer names ['Dense_0', 'Dense_1', ...] of a flax Linen MLP."""
    groups: list[str] = []
    for path in leaf_paths(params):
        parts = path.split("/")
        while parts and parts[0] in skip:
            parts = parts[1:]
        name = "/".join(parts[:depth])
        if name not in groups:
            groups.append(name)
    return groups
