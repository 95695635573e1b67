"""Figures for the experiments (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_spectrum(
    grid: Sequence[float],
    density: Sequence[float],
    top_eigenvalues: Sequence[float],
    layer_top: Mapping[str, float],
    path: str,
    title: str = "",
) -> None:
    """Three panels saved to `path` (PNG): the SLQ spectral density (log scale) with the top
    Lanczos eigenvalues marked, the top-k eigenvalues by index, and the top eigenvalue of
    each layer's diagonal block beside the whole network's."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    grid, density = np.asarray(grid), np.asarray(density)
    top = np.asarray(top_eigenvalues)

    ax = axes[0]
    ax.semilogy(grid, np.maximum(density, 1e-12), color="C0")
    for lam in top:
        ax.axvline(lam, color="C3", alpha=0.35, lw=0.8)
    ax.set_ylim(bottom=max(1e-8, float(density.max()) * 1e-9))
    ax.set(xlabel="eigenvalue λ", ylabel="density", title="spectral density (SLQ)")

    ax = axes[1]
    ax.plot(np.arange(1, len(top) + 1), top, "o-", color="C3")
    ax.set(xlabel="index i", ylabel="λ_i", title=f"top-{len(top)} eigenvalues (Lanczos)")

    ax = axes[2]
    names = list(layer_top)
    ax.bar(range(len(names)), [layer_top[n] for n in names], color="C2", label="layer block H_ll")
    ax.axhline(top[0], color="C3", ls="--", label="whole network")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.25 * max([float(top[0])] + list(layer_top.values())))
    ax.set(ylabel="top eigenvalue", title="per-layer vs whole-network top eigenvalue")
    ax.legend(loc="upper right")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
