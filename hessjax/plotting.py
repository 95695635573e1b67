"""Figures for the experiments (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str, title: str = "") -> None:
    """Title (if any), tight layout, write `path` as PNG at 120 dpi, close the figure."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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

    _save(fig, path, title)


def plot_static_force(
    num_classes: Sequence[int],
    ratios: Mapping[str, Mapping[str, Sequence[float]]],
    fits: Mapping[str, Mapping[str, tuple[float, float] | None]],
    reference_slopes: Mapping[str, float],
    path: str,
    title: str = "",
) -> None:
    """Static force (Dong et al.): one log-log panel per block kind (e.g. 'output', 'hidden')
    of the ratio r vs the number of classes C, one series per loss, from
    ratios[loss][block] (len(C),); fits[loss][block] = (slope, intercept) of log r vs log C
    (None: not fitted) is drawn solid with its slope in the legend; a series that is
    identically 0 is listed in the legend as 'exactly 0'; reference_slopes[block] is drawn
    dashed through the first fitted series' line at the smallest C. Saved to `path` (PNG)."""
    cs = np.asarray(num_classes, np.float64)
    blocks = list(reference_slopes)
    fig, axes = plt.subplots(1, len(blocks), figsize=(5.6 * len(blocks), 4.4), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        anchor = None
        for i, (loss, per_block) in enumerate(ratios.items()):
            r = np.asarray(per_block[block], np.float64)
            fit = fits.get(loss, {}).get(block)
            if np.all(r == 0):
                ax.plot([], [], "x", color=f"C{i}", label=f"{loss}: exactly 0")
                continue
            pos = r > 0
            ax.loglog(cs[pos], r[pos], "o", color=f"C{i}", label=f"{loss}")
            if fit is not None:
                slope, intercept = fit
                line = np.exp(intercept) * cs**slope
                label = f"{loss} fit, slope {slope:.2f}"
                ax.loglog(cs, line, "-", color=f"C{i}", lw=1, label=label)
                anchor = line[0] if anchor is None else anchor
        ref = reference_slopes[block]
        if anchor is not None:
            ax.loglog(cs, anchor * (cs / cs[0]) ** ref, "--", color="0.4", lw=1,
                      label=f"reference slope {ref:g}")  # fmt: skip
        ax.set(xlabel="number of classes C", ylabel="r = ‖H_ij‖²_F / ‖H_ii‖²_F",
               title=f"{block} neuron blocks")  # fmt: skip
        ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_dynamic_force(
    steps: Sequence[int],
    loss: Sequence[float],
    norms: Mapping[str, Sequence[float]],
    path: str,
    cross: str | None = None,
    stderr: Mapping[str, Sequence[float]] | None = None,
    log_steps: bool = False,
    title: str = "",
) -> None:
    """Dynamic force (Dong et al.) over training, two panels saved to `path` (PNG): the loss
    (left axis) and the cross-layer block norm norms[cross] (right axis, default the first
    entry) vs step; and every block norm in `norms` (e.g. ‖H_WV‖_F, ‖H_WW‖_F, ‖H_VV‖_F) on
    a log axis, with ±stderr[name] bars where given (estimated norms). log_steps: symlog
    step axis (for checkpoints spaced geometrically)."""
    steps = np.asarray(steps)
    cross = cross or next(iter(norms))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))

    ax = axes[0]
    ax.plot(steps, loss, "o-", ms=3, color="C0", label="loss")
    ax.set(xlabel="step", ylabel="loss")
    ax.tick_params(axis="y", colors="C0")
    twin = ax.twinx()
    twin.plot(steps, norms[cross], "s-", ms=3, color="C3", label=cross)
    twin.set_ylabel(cross, color="C3")
    twin.tick_params(axis="y", colors="C3")
    ax.set_title(f"loss and {cross}")

    ax = axes[1]
    for i, (name, values) in enumerate(norms.items()):
        err = None if stderr is None or name not in stderr else np.asarray(stderr[name])
        ax.errorbar(steps, values, yerr=err, fmt="o-", ms=3, color=f"C{i + 1}", label=name)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="Frobenius norm", title="layer-block norms of the Hessian")
    ax.legend(loc="best", fontsize=8)
    if log_steps:
        for ax in axes:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(-0.1, 1.5 * max(float(steps.max()), 1.0))
    _save(fig, path, title)


def plot_block_ratios(ratios, names: Sequence[str], path: str, title: str = "") -> None:
    """Heatmap of log10 r_ij for a (b, b) block-ratio matrix, r_ij = ‖H_ij‖²_F / ‖H_ii‖²_F
    (row i normalised by its diagonal block), block names on both axes and each value
    annotated. Saved to `path` (PNG)."""
    r = np.asarray(ratios, np.float64)
    with np.errstate(divide="ignore"):
        logr = np.log10(np.where(r > 0, r, np.nan))
    b = len(names)
    fig, ax = plt.subplots(figsize=(1.3 * b + 3.2, 1.1 * b + 2.2))
    image = ax.imshow(logr, cmap="viridis")
    low, high = image.norm.vmin, image.norm.vmax
    for i in range(b):
        for j in range(b):
            text = "0" if r[i, j] == 0 else f"{r[i, j]:.2g}"
            dark = np.isnan(logr[i, j]) or logr[i, j] < (low + high) / 2
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(b), names, rotation=30, ha="right")
    ax.set_yticks(range(b), names)
    ax.set(xlabel="block j", ylabel="block i", title=title or "r_ij = ‖H_ij‖²_F / ‖H_ii‖²_F")
    fig.colorbar(image, ax=ax, label="log10 r_ij")
    _save(fig, path)


def plot_layerwise_top(
    names: Sequence[str], block_top: Sequence[float], whole_top: float, path: str, title: str = ""
) -> None:
    """Top eigenvalue of each layer's diagonal block H_ll as bars in depth order, with the
    whole network's top eigenvalue as a dashed line (never below any bar: Cauchy
    interlacing). Saved to `path` (PNG)."""
    top = np.asarray(block_top, np.float64)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 3.5, 4.2))
    ax.bar(range(len(names)), top, color="C2", label="layer block H_ll")
    ax.axhline(whole_top, color="C3", ls="--", label=f"whole network ({whole_top:.4g})")
    ax.set_xticks(range(len(names)), [f"{n}\n{t:.4g}" for n, t in zip(names, top, strict=True)])
    ax.set_ylim(0, 1.2 * max(float(whole_top), float(top.max(initial=0))))
    ax.set(xlabel="layer (input → output)", ylabel="top eigenvalue",
           title=title or "layer-wise vs whole-network top eigenvalue")  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def plot_overlap_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str,
    title: str = "",
    marks: Sequence[int] = (),
    reference: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    reference_label: str = "reference",
) -> None:
    """Overlap of two top-k eigenspaces vs k, one curve per entry of `curves` (e.g. per layer),
    each {'k': (m,), 'overlap': (m,), 'chance': (m,)} (as `OverlapCurve.as_dict()`), with its
    chance level k/n dotted in the same colour, an optional `reference` curve of the same name
    dashed and faint (labelled `reference_label`, e.g. at initialisation), and vertical lines
    at `marks` (e.g. C, 2C). Saved to `path` (PNG)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, curve) in enumerate(curves.items()):
        ks = np.asarray(curve["k"])
        ax.plot(ks, curve["overlap"], "o-", ms=3, color=f"C{i}", label=name)
        if reference and name in reference:
            ref = reference[name]
            ax.plot(ref["k"], ref["overlap"], "--", color=f"C{i}", alpha=0.5,
                    label=f"{name} {reference_label}")  # fmt: skip
        ax.plot(ks, curve["chance"], ":", color=f"C{i}", label=f"{name} chance k/n")
    for k in marks:
        ax.axvline(k, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="k (top-k eigenspace)", ylabel="overlap ‖UₖᵀVₖ‖²_F / k")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_outliers_vs_classes(runs: Sequence[Mapping], path: str, title: str = "") -> None:
    """Number of outlier eigenvalues of each layer's Hessian block vs the number of classes C,
    from `runs` = [{'num_classes': C, 'layers': {name: {'exact_count': int, ...}}}, ...],
    with the lines C and C-1 for reference. Saved to `path` (PNG)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cs = np.asarray([r["num_classes"] for r in runs])
    names = list(runs[0]["layers"]) if runs else []
    for i, name in enumerate(names):
        counts = [r["layers"][name]["exact_count"] for r in runs]
        ax.plot(cs, counts, "o-", color=f"C{i}", label=f"{name} (exact)")
        if all("kron_count" in r["layers"][name] for r in runs):
            kron = [r["layers"][name]["kron_count"] for r in runs]
            ax.plot(cs, kron, "x--", color=f"C{i}", alpha=0.6, label=f"{name} (Kronecker)")
    if cs.size:
        grid = np.linspace(cs.min(), cs.max(), 50)
        ax.plot(grid, grid, color="0.3", lw=0.8, label="C")
        ax.plot(grid, grid - 1, color="0.6", lw=0.8, ls="--", label="C - 1")
    ax.set(xlabel="number of classes C", ylabel="number of outlier eigenvalues")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)
