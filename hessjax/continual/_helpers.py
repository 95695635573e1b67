"""Helpers private to hessjax.continual, shared by its modules."""

from __future__ import annotations

import numpy as np

from hessjax.curvature.layout import select_mask


def energy_rank(cumulative: np.ndarray, target: float, total: float) -> int:
    """Smallest r with cumulative[r - 1] >= target, up to round-off relative to `total`
    (0 if target <= 0)."""
    slack = 1e-12 * total
    if target <= slack:
        return 0
    return int(min(np.searchsorted(cumulative, target - slack) + 1, cumulative.size))


def layer_leaf(paths: list[str], layer: str, name: str) -> int | None:
    """Index of the one leaf of `paths` named `layer`/`name` (None if absent)."""
    hits = [i for i, on in enumerate(select_mask(paths, f"{layer}/{name}")) if on]
    if len(hits) > 1:
        raise ValueError(f"layer {layer!r} matches several {name} leaves: {hits}")
    return hits[0] if hits else None
