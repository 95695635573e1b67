"""Figures of the experiment binaries (matplotlib). Importing this module selects the Agg
backend (no display needed): it is for the binaries, which are scripts; `hessjax` itself never
imports matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import write_atomic  # noqa: E402


def _save(fig, path: str, title: str = "") -> None:
    """Title (if any), tight layout, write `path` as PNG at 120 dpi (atomically), close the
    figure."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def _symlog_steps(ax, steps: Sequence[int]) -> None:
    """Training-step x axis: symlog (step 0 stays visible) when steps span decades."""
    positive = [s for s in steps if s > 0]
    if positive and max(positive) / min(positive) >= 20:
        ax.set_xscale("symlog", linthresh=min(positive))


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
    title: str = "",
    ylabel: str = "Frobenius norm",
    panel_title: str = "layer-block norms of the Hessian",
) -> None:
    """Dynamic force (Dong et al.) over training, two panels saved to `path` (PNG): the loss
    (left axis) and the cross-layer block norm norms[cross] (right axis, default the first
    entry) vs step; and every block norm in `norms` (e.g. ‖H_WV‖_F, ‖H_WW‖_F, ‖H_VV‖_F) on
    a log axis, with ±stderr[name] bars where given (estimated norms). Steps spanning
    decades (checkpoints spaced geometrically) go on a symlog axis. `ylabel` and
    `panel_title` name the right panel's quantity (e.g. neuron-block ratios)."""
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
    ax.set(xlabel="step", ylabel=ylabel, title=panel_title)
    ax.legend(loc="best", fontsize=8)
    for ax in axes:
        _symlog_steps(ax, steps)
        ax.set_xlim(left=steps.min())  # no empty negative decades on a symlog axis
    _save(fig, path, title)


def plot_block_spectra(
    panels: Mapping[str, Mapping[int, Mapping[str, Sequence[float]]]],
    path: str,
    title: str = "",
    bins: int = 40,
) -> None:
    """Distributions of block spectra (Dong et al.), one row per block kind (e.g. 'nn output')
    and one column per number of classes C: panels[row][C] = {'diagonal': eigenvalues of
    diagonal blocks, 'off_diagonal': singular values of off-diagonal blocks}. Histograms
    (densities) of log10 |value| on bins shared along each row, so the off-diagonal mass
    moving left as C grows is visible. Saved to `path` (PNG)."""
    rows = list(panels)
    cols = sorted({c for row in panels.values() for c in row})
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(max(3.2 * len(cols), 9.0), 2.6 * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        values = [np.abs(np.asarray(v, np.float64)) for p in panels[row].values() for v in
                  p.values()]  # fmt: skip
        pooled = np.concatenate([v[v > 0] for v in values] or [np.ones(1)])
        lo, hi = np.log10(pooled.min()), np.log10(pooled.max())
        edges = np.linspace(lo, hi + 1e-9 if hi > lo else lo + 1, bins + 1)
        for c_idx, c in enumerate(cols):
            ax = axes[r, c_idx]
            for k, (name, label) in enumerate(
                (("diagonal", "eig H_ii"), ("off_diagonal", "sv H_ij"))
            ):
                v = np.abs(np.asarray(panels[row].get(c, {}).get(name, []), np.float64))
                v = v[v > 0]
                if v.size:
                    ax.hist(np.log10(v), bins=edges, density=True, alpha=0.55, color=f"C{k}",
                            label=label)  # fmt: skip
            ax.set_title(f"{row}, C = {c}", fontsize=9)
            ax.set_xlabel("log10 |value|", fontsize=8)
            if c_idx == 0:
                ax.set_ylabel("density", fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
    _save(fig, path, title)


def plot_hessian_heatmaps(
    matrices: Mapping[str, Mapping[str, np.ndarray]],
    bounds: Mapping[str, Sequence[float]],
    path: str,
    vmax_fraction: float = 0.01,
    title: str = "",
) -> None:
    """Heatmaps of |H| with the block grid drawn: one row per model, one column per stage
    (e.g. 'init', 'trained'); matrices[model][stage] is a non-negative (m, m) image (|H| with
    its blocks contiguous, possibly max-pooled), bounds[model] the block boundaries in the
    image's pixel coordinates. The colour scale tops at vmax_fraction · max (the authors'
    code shows max / 100). Saved to `path` (PNG)."""
    models = list(matrices)
    stages = list(next(iter(matrices.values())))
    fig, axes = plt.subplots(
        len(models), len(stages), figsize=(4.6 * len(stages), 4.2 * len(models)), squeeze=False
    )
    for r, model in enumerate(models):
        for s, stage in enumerate(stages):
            ax = axes[r, s]
            a = np.asarray(matrices[model][stage], np.float64)
            im = ax.imshow(a, cmap="cividis", vmin=0, vmax=vmax_fraction * a.max() or 1.0,
                           interpolation="nearest")  # fmt: skip
            for b in bounds[model][1:-1]:
                ax.axhline(b - 0.5, color="w", lw=0.3, alpha=0.6)
                ax.axvline(b - 0.5, color="w", lw=0.3, alpha=0.6)
            ax.set_title(f"{model}, {stage}: |H| (max / {1 / vmax_fraction:g})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
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


def plot_exact_vs_kron(
    forms: Mapping[str, Mapping[str, Mapping]], path: str, title: str = "", marks=()
) -> None:
    """Exact layer block vs its Kronecker approximation, one column per layer: top row the
    overlap of their top-k eigenspaces vs k (one line per form of M, chance dotted), bottom
    row their top eigenvalues vs index (exact solid, Kronecker dashed; log scale where all are
    positive; equal forms, as in ReLU nets, overlap exactly). forms: {form name (e.g.
    'exact M', 'Gauss-Newton M'): {layer: {'overlap_exact_vs_kron': OverlapCurve.as_dict(),
    'exact_eigenvalues': [...], 'kron_eigenvalues': [...]}}}. Saved to `path` (PNG)."""
    layers = list(next(iter(forms.values())))
    fig, axes = plt.subplots(2, len(layers), figsize=(3.6 * len(layers), 6.4), squeeze=False)
    for col, name in enumerate(layers):
        top, bottom = axes[0, col], axes[1, col]
        positive = True
        for i, (form, per_layer) in enumerate(forms.items()):
            r = per_layer[name]
            curve = r["overlap_exact_vs_kron"]
            top.plot(curve["k"], curve["overlap"], ("o-", "s--")[i % 2], ms=3, color=f"C{i}",
                     mfc="none" if i else None, label=form)  # fmt: skip
            if i == 0:
                top.plot(curve["k"], curve["chance"], ":", color="0.5", label="chance k/n")
            ex, kr = np.asarray(r["exact_eigenvalues"]), np.asarray(r["kron_eigenvalues"])
            idx = np.arange(1, len(ex) + 1)
            bottom.plot(idx, ex, "-", color=f"C{i}", label=f"exact ({form})")
            bottom.plot(idx, kr, "--", color=f"C{i}", label=f"Kronecker ({form})")
            positive &= bool(np.all(ex > 0) and np.all(kr > 0))
        for k in marks:
            top.axvline(k, color="0.6", lw=0.8, ls="--")
            bottom.axvline(k, color="0.6", lw=0.8, ls="--")
        if positive:
            bottom.set_yscale("log")
        top.set_ylim(-0.02, 1.02)
        top.set(title=name, xlabel="k", ylabel="overlap ‖UₖᵀVₖ‖²_F / k" if col == 0 else None)
        bottom.set(xlabel="eigenvalue index i", ylabel="λ_i" if col == 0 else None)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    _save(fig, path, title)


def plot_kronecker_sweep(
    rows: Sequence[Mapping], path: str, axes: Sequence[str], title: str = ""
) -> None:
    """Top-C overlap of the exact layer block and its Kronecker approximation per setting of a
    one-at-a-time sweep (experiments/kronecker_sweep.py): one panel per swept axis (the base
    setting and the settings that vary it), one colour per layer, M exact solid and
    Gauss-Newton dashed. rows: [{'setting': {axis: value, ..., 'axis': name}, 'result':
    {'num_classes', 'layers': {layer: {'hessian': {'overlap_at': {str(k): v}}, 'ggn': ...}}}}].
    Saved to `path` (PNG)."""
    fig, panels = plt.subplots(1, len(axes), figsize=(3.6 * len(axes), 3.8), squeeze=False)
    for ax, axis in zip(panels[0], axes, strict=True):
        mine = [r for r in rows if r["setting"]["axis"] in ("base", axis)]
        mine.sort(key=lambda r: (isinstance(r["setting"][axis], str), r["setting"][axis]))
        labels = [str(r["setting"][axis]) for r in mine]
        x = np.arange(len(mine))
        layers = list(mine[0]["result"]["layers"]) if mine else []
        for i, name in enumerate(layers):
            for form, style in (("hessian", "o-"), ("ggn", "s--")):
                y = [
                    r["result"]["layers"][name][form]["overlap_at"][str(r["result"]["num_classes"])]
                    if name in r["result"]["layers"] else np.nan
                    for r in mine
                ]  # fmt: skip
                label = f"{name} ({'exact' if form == 'hessian' else 'GN'} M)"
                ax.plot(x, y, style, ms=4, color=f"C{i}", alpha=1 if form == "hessian" else 0.6,
                        label=label)  # fmt: skip
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set(xlabel=axis, ylabel="top-C overlap" if axis == axes[0] else None)
    panels[0, 0].legend(fontsize=7)
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


def plot_drift_mode(
    steps: Sequence[int],
    coordinates: Sequence[float],
    weight_ratios: Sequence[float],
    update_ratios: Sequence[float],
    path: str,
    title: str = "",
) -> None:
    """Drift mode (Haink): the coordinate <θ(t) − θ̄, d> of the weight snapshots along the top
    principal direction d vs step, and the explained-variance ratios of the principal
    components of the weight snapshots and of the update snapshots by index (log scale).
    Saved to `path` (PNG)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    ax.plot(np.asarray(steps), np.asarray(coordinates), "-", color="C0")
    ax.set(xlabel="step", ylabel="<θ(t) − θ̄, d>", title="motion along the drift mode d")
    ax = axes[1]
    for i, (label, ratios) in enumerate((("weights", weight_ratios), ("updates", update_ratios))):
        r = np.asarray(ratios, np.float64)
        ax.semilogy(np.arange(1, r.size + 1), r, "o-", ms=3, color=f"C{i}", label=label)
    ax.set(xlabel="principal component", ylabel="explained variance ratio",
           title="PCA of the snapshots")  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_quadratic_fit(
    steps: Sequence[int],
    series,
    ratios: Sequence[float],
    log_amplitudes: Sequence[float],
    eigenvalues: Sequence[float],
    fitted: Sequence[float],
    path: str,
    title: str = "",
    num_show: int = 5,
) -> None:
    """Quadratic-potential model: |c_i(t)| of the fitted series (T, k) on a log axis for the
    first `num_show` directions with their fits exp(a_i)·|ρ_i|^(t − t₀) dashed, and the
    fitted curvature λ_fit = (1 − ρ)/η against the measured eigenvalue λ with the identity
    line. Saved to `path` (PNG)."""
    t = np.asarray(steps, np.float64)
    c = np.abs(np.asarray(series, np.float64))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for i in range(min(num_show, c.shape[1])):
        ax.semilogy(t, np.where(c[:, i] > 0, c[:, i], np.nan), ".", ms=4, color=f"C{i}",
                    label=f"e_{i + 1} (λ={eigenvalues[i]:.3g})")  # fmt: skip
        if np.isfinite(ratios[i]) and np.isfinite(log_amplitudes[i]):
            line = np.exp(log_amplitudes[i] + (t - t[0]) * np.log(abs(ratios[i])))
            ax.semilogy(t, line, "--", lw=1, color=f"C{i}")
    ax.set(xlabel="step", ylabel="|c_i(t)|", title="projections on the top eigenvectors")
    ax.legend(loc="best", fontsize=8)
    ax = axes[1]
    lam, fit = np.asarray(eigenvalues, np.float64), np.asarray(fitted, np.float64)
    ax.plot(lam, fit, "o", color="C3", label="fit")
    ends = [float(np.nanmin([lam.min(), np.nanmin(fit)])), float(np.nanmax([lam.max(),
            np.nanmax(fit)]))]  # fmt: skip
    ax.plot(ends, ends, color="0.4", lw=0.8, label="λ_fit = λ")
    ax.set(xlabel="eigenvalue λ (Lanczos)", ylabel="λ_fit = (1 − ρ)/η",
           title="fitted vs measured curvature")  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_weight_alignment(
    eigenvalues: Sequence[float],
    global_cos: Sequence[float],
    layer_cos: Mapping[str, Sequence[float]],
    chance: float,
    path: str,
    title: str = "",
) -> None:
    """Alignment of Hessian eigenvectors with the weights vs eigenvalue: |cos(e_j, θ)| over
    the whole network (chance level dotted) and |cos(P_l e_j, P_l θ)| within each layer l,
    on a symlog eigenvalue axis (negative eigenvalues included). Saved to `path` (PNG)."""
    lam = np.asarray(eigenvalues, np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    ax.plot(lam, np.asarray(global_cos), "o", ms=4, color="C0", label="whole network")
    ax.axhline(chance, color="0.5", ls=":", label=f"chance {chance:.2g}")
    ax.set(ylabel="|cos(e_j, θ)|", title="eigenvector vs weight vector")
    ax = axes[1]
    for i, (name, values) in enumerate(layer_cos.items()):
        ax.plot(lam, np.asarray(values, np.float64), "o", ms=4, color=f"C{i + 1}", label=name)
    ax.set(ylabel="|cos(P_l e_j, P_l θ)|", title="within each layer")
    for ax in axes:
        ax.set_xscale("symlog", linthresh=max(1e-3, float(np.min(np.abs(lam[lam != 0]),
                      initial=1.0))))  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ_j")
        ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_svd_overlap(matrices: Mapping[str, np.ndarray], path: str, title: str = "") -> None:
    """One heatmap per entry of log10 |<u_i v_iᵀ, e_j>|² (rows: SVD index i of a kernel,
    columns: Hessian eigen-index j). Saved to `path` (PNG)."""
    names = list(matrices)
    cols = min(3, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        m = np.asarray(matrices[name], np.float64)
        with np.errstate(divide="ignore"):
            image = ax.imshow(np.log10(np.maximum(m, 1e-12)), cmap="viridis", aspect="auto",
                              vmin=-6, vmax=0)  # fmt: skip
        ax.set(xlabel="eigen-index j", ylabel="SVD index i", title=name)
        fig.colorbar(image, ax=ax, label="log10 overlap")
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    _save(fig, path, title)


def plot_svd_curvature(
    singular_values: Mapping[str, Sequence[float]],
    curvatures: Mapping[str, Sequence[float]],
    mean_curvature: Mapping[str, float],
    path: str,
    title: str = "",
) -> None:
    """Curvature dᵀHd along each rank-one SVD direction u_i v_iᵀ of a kernel against its
    singular value s_i (log axes), one panel per kernel, with the block's mean curvature
    tr(H_ll)/n_l dashed. Saved to `path` (PNG)."""
    names = list(curvatures)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        s = np.asarray(singular_values[name], np.float64)
        c = np.asarray(curvatures[name], np.float64)
        pos = c > 0
        ax.loglog(s[pos], c[pos], "o", ms=4, color=f"C{i}", label="u_i v_iᵀ")
        ax.axhline(mean_curvature[name], color="0.4", ls="--", lw=1,
                   label=f"mean tr/n = {mean_curvature[name]:.3g}")  # fmt: skip
        ax.set(xlabel="singular value s_i", ylabel="curvature dᵀHd", title=name)
        ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_first_task_accuracy(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str,
    title: str = "",
    task: int = 0,
) -> None:
    """Accuracy on one task (default the first) as tasks are added: curves[strategy] is
    (seeds, T), row s the accuracies R[i, task] after training tasks i = 0..T-1 of seed s;
    one line per strategy (mean over seeds) with a ± std band; NaN entries (a diverged seed)
    are left out of the mean, and a point no seed reached is not drawn. Saved to `path` (PNG)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1])
        x = np.arange(1, v.shape[1] + 1)
        count = np.sum(np.isfinite(v), axis=0)
        total = np.where(count > 0, np.nansum(v, axis=0), np.nan)
        mean = total / np.maximum(count, 1)
        dev = np.nansum((v - mean) ** 2, axis=0)
        std = np.where(count > 1, np.sqrt(dev / np.maximum(count - 1, 1)), 0.0)
        style = "-" if i < 10 else "--"
        ax.plot(x, mean, style, marker="o", ms=3.5, color=f"C{i % 10}", label=name)
        ax.fill_between(x, mean - std, mean + std, color=f"C{i % 10}", alpha=0.15, lw=0)
    ax.set_xticks(np.arange(1, v.shape[1] + 1))
    ax.set(
        xlabel="tasks trained",
        ylabel=f"test accuracy on task {task + 1}",
        title=f"accuracy on task {task + 1} as tasks are added (mean ± std over seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, ncol=2)
    _save(fig, path, title)


def plot_mask_overlap(
    steps: Sequence[int],
    exact: Mapping[int, Sequence[float | None]],
    sketch: Mapping[int, Sequence[float | None]],
    chance: Mapping[int, float],
    random: Mapping[int, tuple[Sequence[float], Sequence[float]]],
    path: str,
    title: str = "",
    layerwise: Mapping[int, Sequence[float | None]] | None = None,
) -> None:
    """Overlap of the top-k |θ| mask with the top-k Hessian eigenspace against the training
    step, one panel per k: exact (solid), sketched (dashed), per-layer magnitude mask
    (dotted, optional), random k-masks (mean ± std band) and the chance level k/n (grey).
    Each mapping is keyed by k; series hold one value (or None) per step. Saved to `path`."""
    ks = sorted(set(chance))
    cols = min(len(ks), 3)
    rows = -(-len(ks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.7 * rows), squeeze=False)
    x = np.asarray(steps, np.float64)

    def line(ax, values, *args, **kwargs):
        v = np.asarray([np.nan if a is None else a for a in values], np.float64)
        if np.any(np.isfinite(v)):
            ax.plot(x, v, *args, **kwargs)

    for ax, k in zip(axes.ravel(), ks, strict=False):
        if k in random:
            mean, std = (np.asarray(a, np.float64) for a in random[k])
            ax.fill_between(x, mean - std, mean + std, color="0.6", alpha=0.3, lw=0)
            ax.plot(x, mean, color="0.45", lw=1, label="random masks (mean ± std)")
        ax.axhline(chance[k], color="0.2", ls=":", lw=1, label=f"chance k/n = {chance[k]:.3g}")
        line(ax, exact.get(k, []), "o-", color="C0", ms=4, label="exact eigh")
        line(ax, sketch.get(k, []), "s--", color="C3", ms=4, mfc="none", label="sketch_eigh")
        if layerwise:
            line(ax, layerwise.get(k, []), "^:", color="C2", ms=3, label="per-layer mask")
        _symlog_steps(ax, steps)
        ax.set_ylim(bottom=0)
        ax.set(xlabel="training step", ylabel="overlap ‖V_k[mask]‖²_F / k", title=f"k = {k}")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(loc="best", fontsize=7)
    for ax in axes.ravel()[len(ks) :]:
        ax.axis("off")
    _save(fig, path, title)


def plot_sketch_accuracy(
    steps: Sequence[int],
    exact_spectra: Sequence[Sequence[float] | None],
    sketch_spectra: Sequence[Sequence[float]],
    error_estimate: Sequence[float],
    error_stderr: Sequence[float],
    true_error: Sequence[float | None],
    optimal_error: Sequence[float | None],
    exact_overlap: Mapping[int, Sequence[float | None]],
    sketch_overlap: Mapping[int, Sequence[float | None]],
    path: str,
    title: str = "",
) -> None:
    """Sketched vs exact eigendecomposition, three panels: |λ_i| by rank at the last
    checkpoint (exact: all, sketch: its k); the sketch's a-posteriori estimate of
    ‖H − Ĥ_k‖_F/‖H‖_F (± 2 stderr) against the true error and the optimal rank-k error over
    training; sketched vs exact mask overlap (every k and step, y = x dashed). Spectra are
    ranked by |λ|; None where no exact answer was computed. Saved to `path` (PNG)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    last_exact = exact_spectra[-1] if len(exact_spectra) else None
    if last_exact is not None:
        e = np.abs(np.asarray(last_exact, np.float64))
        ax.loglog(np.arange(1, e.size + 1), np.maximum(e, 1e-12), color="C0", label="exact")
    s = np.abs(np.asarray(sketch_spectra[-1], np.float64))
    ax.loglog(np.arange(1, s.size + 1), np.maximum(s, 1e-12), "--", color="C3", label="sketch")
    ax.set(xlabel="rank i (by |λ|)", ylabel="|λ_i|", title=f"spectrum at step {steps[-1]}")
    ax.legend(loc="best", fontsize=8)

    ax = axes[1]
    x = np.asarray(steps, np.float64)
    est, err = np.asarray(error_estimate, np.float64), np.asarray(error_stderr, np.float64)
    ax.errorbar(x, est, yerr=2 * err, fmt="s--", color="C3", ms=4, capsize=3,
                label="estimate (± 2 stderr)")  # fmt: skip
    for values, style, color, label in (
        (true_error, "o-", "C0", "true"),
        (optimal_error, ":", "0.4", "optimal rank-k (exact eigh)"),
    ):
        v = np.asarray([np.nan if a is None else a for a in values], np.float64)
        if np.any(np.isfinite(v)):
            ax.plot(x, v, style, color=color, ms=4, label=label)
    _symlog_steps(ax, steps)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="training step", ylabel="‖H − Ĥ_k‖_F / ‖H‖_F", title="sketch error")
    ax.legend(loc="best", fontsize=8)

    ax = axes[2]
    both = [k for k in sorted(sketch_overlap) if k in exact_overlap]
    for i, k in enumerate(both):
        pairs = [
            (a, b)
            for a, b in zip(exact_overlap[k], sketch_overlap[k], strict=True)
            if a is not None and b is not None
        ]
        if pairs:
            a, b = np.asarray(pairs).T
            ax.plot(a, b, "o", color=f"C{i}", ms=4, label=f"k = {k}")
    if both:
        top = ax.get_xlim()[1]
        ax.plot([0, top], [0, top], "--", color="0.5", lw=1)
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no exact eigh", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="exact overlap", ylabel="sketched overlap", title="mask overlap: sketch vs exact")
    _save(fig, path, title)


def plot_edge_of_stability(runs: Sequence[Mapping], path: str, title: str = "") -> None:
    """Panels saved to `path` (PNG): the sharpness against the step for each step size η, with
    its threshold (2/η) dashed in the same colour, and the full-batch training loss (log
    scale) against the step. Adam runs (a non-empty "preconditioned_sharpness") get a first
    panel of λ_max(P⁻¹H) against its threshold 38/η (log scale) and the raw sharpness after."""
    adam = any(r.get("preconditioned_sharpness") for r in runs)
    fig, axes = plt.subplots(1, 3 if adam else 2, figsize=(17 if adam else 12, 4.2))
    raw_ax, loss_ax = axes[-2], axes[-1]
    for i, r in enumerate(runs):
        color, eta = f"C{i}", r["learning_rate"]
        if adam:
            axes[0].semilogy(r["steps"], r["preconditioned_sharpness"], color=color,
                             label=f"η = {eta:g}")  # fmt: skip
            axes[0].axhline(r["threshold"], color=color, ls="--", lw=0.9, alpha=0.8)
            raw_ax.plot(r["steps"], r["sharpness"], color=color, label=f"η = {eta:g}")
        else:
            raw_ax.plot(r["steps"], r["sharpness"], color=color, label=f"η = {eta:g}")
            raw_ax.axhline(2 / eta, color=color, ls="--", lw=0.9, alpha=0.8)
        loss_ax.semilogy(r["loss_steps"], r["loss_curve"], color=color, lw=0.8)
    if adam:
        axes[0].set(xlabel="step", ylabel="λ_max(P⁻¹H)",
                    title="preconditioned sharpness (dashed: (2 + 2β₁)/((1 − β₁)η))")  # fmt: skip
        axes[0].legend(loc="lower right")
        raw_ax.set(xlabel="step", ylabel="sharpness λ_max(H)", title="raw sharpness")
    else:
        raw_ax.set(xlabel="step", ylabel="sharpness λ_max", title="sharpness (dashed: 2/η)")
    raw_ax.legend(loc="lower right")
    loss_ax.set(xlabel="step", ylabel="training loss", title="full-batch training loss")
    _save(fig, path, title)


def plot_adam_sharpness(
    steps: Sequence[int], sharpness: Sequence[float], threshold: float, path: str, title: str = ""
) -> None:
    """λ_max(P⁻¹H) measured during Adam training against the step (log scale), with Adam's
    stability threshold (2 + 2β₁)/((1 − β₁)η) dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogy(steps, sharpness, "o-", ms=3, label="λ_max(P⁻¹H), step's minibatch")
    ax.axhline(threshold, color="k", ls="--", lw=0.9, label=f"38/η = {threshold:.3g}")
    ax.set(xlabel="training step", ylabel="preconditioned sharpness",
           title="Adam's preconditioned sharpness")  # fmt: skip
    ax.legend()
    _save(fig, path, title)


def plot_layerwise_sweep(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    trends: Mapping[str, tuple[Sequence[int], Sequence[float | None]]],
    path: str,
    title: str = "",
) -> None:
    """Layer-wise top eigenvalues of a sweep: one panel per swept field, one line per value,
    panels[field][value] = top eigenvalue of each layer block in depth order (input → output)
    against the layer's depth (1 = first layer; the last point is the output layer), on a log
    axis; and a last panel of the rank correlation of the layer tops with depth against the
    training step, trends[setting] = (steps, correlations or None), for every setting.
    Saved to `path` (PNG)."""
    num = len(panels) + 1
    cols = min(num, 4)
    rows = -(-num // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.5 * rows), squeeze=False)
    for ax, (field, series) in zip(axes.ravel(), panels.items(), strict=False):
        for i, (label, tops) in enumerate(series.items()):
            top = np.asarray(tops, np.float64)
            ax.semilogy(np.arange(1, top.size + 1), top, "o-", ms=4, color=f"C{i}", label=label)
        ax.set(xlabel="layer (1 = input side, last = output)", ylabel="top eigenvalue of H_ll",
               title=field)  # fmt: skip
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    ax = axes.ravel()[len(panels)]
    for i, (name, (steps, rhos)) in enumerate(trends.items()):
        r = np.asarray([np.nan if v is None else v for v in rhos], np.float64)
        ax.plot(np.asarray(steps), r, marker="o", ms=3, lw=1, color=f"C{i % 10}",
                ls="-" if i < 10 else "--", label=name)  # fmt: skip
    ax.axhline(0, color="0.3", lw=0.8)
    _symlog_steps(ax, [s for steps, _ in trends.values() for s in steps])
    ax.set_xlim(left=0)
    ax.set_ylim(-1.05, 1.05)
    ax.set(xlabel="training step", ylabel="Spearman(layer top, depth)",
           title="> 0: deeper layers larger")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=6, ncol=2)
    for ax in axes.ravel()[num:]:
        ax.axis("off")
    _save(fig, path, title)


def plot_pca_spectra(
    eigenvalues: Sequence[float],
    pcs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str,
    title: str = "",
) -> None:
    """PCA of snapshots against the Hessian by eigenvalues, two log-log panels: the i-th PCA
    variance against the i-th Hessian eigenvalue λ_i (rank-matched spectra), and each principal
    component's curvature p_iᵀHp_i against its variance. pcs[name] = (variances (k,),
    curvatures (k,)), e.g. for 'weights' and 'updates'; non-positive values are left out.
    Saved to `path` (PNG)."""
    lam = np.asarray(eigenvalues, np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, (name, (variances, curvatures)) in enumerate(pcs.items()):
        var = np.asarray([np.nan if v is None else v for v in variances], np.float64)
        curv = np.asarray([np.nan if v is None else v for v in curvatures], np.float64)
        k = var.size
        ok = (var > 0) & (lam[:k] > 0)
        axes[0].loglog(lam[:k][ok], var[ok], "o-", ms=4, color=f"C{i}", label=name)
        ok = (var > 0) & (curv > 0)
        axes[1].loglog(var[ok], curv[ok], "o", ms=4, color=f"C{i}", label=name)
    axes[0].set(xlabel="Hessian eigenvalue λ_i", ylabel="PCA variance of component i",
                title="rank-matched spectra (i = 1 .. k)")  # fmt: skip
    axes[1].axhline(lam[0], color="C3", ls="--", lw=0.8, label="λ_1")
    axes[1].set(xlabel="PCA variance of component i", ylabel="curvature p_iᵀHp_i",
                title="curvature along each principal component")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    _save(fig, path, title)


def plot_trajectory_fit(
    steps: Sequence[int],
    coefficients,
    eigenvalues: Sequence[float],
    predicted: Sequence[float] | None,
    ratio: Sequence[float],
    r2: Sequence[float],
    path: str,
    title: str = "",
    num_show: int = 4,
) -> None:
    """Quadratic-potential model on a recorded trajectory, two panels: the eigen-coefficients
    c_i(t) = <θ_t − θ*, e_i> (T, k) of the first `num_show` directions against the step, and
    the fitted per-step decay ρ_i against the prediction 1 − ηλ_i (`predicted`; None: plotted
    against λ_i instead) with the identity line, coloured by the fit's R². Saved to `path`."""
    c = np.asarray(coefficients, np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for i in range(min(num_show, c.shape[1])):
        ax.plot(np.asarray(steps), c[:, i], "-", lw=0.8, color=f"C{i}",
                label=f"e_{i + 1} (λ={eigenvalues[i]:.3g})")  # fmt: skip
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(xlabel="step", ylabel="c_i(t) = <θ_t − θ*, e_i>", title="eigen-coefficients")
    ax.legend(loc="best", fontsize=8)
    ax = axes[1]
    rho = np.asarray(ratio, np.float64)
    x = np.asarray(eigenvalues if predicted is None else predicted, np.float64)
    dots = ax.scatter(x, rho, c=np.asarray(r2, np.float64), cmap="viridis", vmin=0, vmax=1, s=24)
    fig.colorbar(dots, ax=ax, label="R² of the one-step fit")
    if predicted is not None:
        ends = [float(np.nanmin([x.min(), np.nanmin(rho)])), 1.0]
        ax.plot(ends, ends, color="0.4", lw=1, label="ρ = 1 − ηλ")
        ax.legend(loc="best", fontsize=8)
    ax.set(
        xlabel="1 − ηλ_i (predicted)" if predicted is not None else "λ_i",
        ylabel="fitted per-step ρ_i",
        title="decay per step: fit vs quadratic model",
    )
    ax.grid(alpha=0.3)
    _save(fig, path, title)


def plot_overlap_vs_k(
    curves: Mapping[str, Sequence[float]],
    num_params: int,
    path: str,
    title: str = "",
    per_step: Mapping[int, Sequence[float]] | None = None,
) -> None:
    """Mask-vs-eigenspace overlap against k = 1, 2, ... (log axis). Left: one line per entry
    of `curves` (label -> overlaps at k = 1 .. len), e.g. the magnitude mask (exact, sketch,
    test Hessian) and the best k-sparse mask, with the chance level k/num_params. Right
    (optional): one curve per training step of `per_step` (step -> overlaps), coloured by
    step. Saved to `path`."""
    panels = 2 if per_step else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.2), squeeze=False)
    top = max(len(v) for v in curves.values())
    ks = np.arange(1, top + 1)
    ax = axes[0, 0]
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(ks[: len(values)], values, "-", color=f"C{i}", lw=1.3, label=label)
    ax.plot(ks, ks / num_params, ":", color="0.3", label="chance k/n")
    ax.set(xlabel="k", ylabel="overlap ‖V_k[mask]‖²_F / k", xscale="log", ylim=(0, 1.02))
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    if per_step:
        ax = axes[0, 1]
        cmap = plt.get_cmap("viridis")
        steps = sorted(per_step)
        for j, step in enumerate(steps):
            v = per_step[step]
            color = cmap(j / max(len(steps) - 1, 1))
            ax.plot(np.arange(1, len(v) + 1), v, "-", color=color, lw=1.2, label=f"step {step}")
        ax.plot(ks, ks / num_params, ":", color="0.3", label="chance k/n")
        ax.set(xlabel="k", ylabel="overlap (top-k |θ| mask)", xscale="log", ylim=(0, 1.02))
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path, title)


def plot_crystallisation(
    steps: Sequence[int],
    mask_iou: Mapping[int, Sequence[float]],
    iou_chance: Mapping[int, float],
    eigenspace: Mapping[str, Mapping[int, Sequence[float | None]]],
    path: str,
    title: str = "",
) -> None:
    """Change between consecutive checkpoints against the later step: left the IoU of the
    top-k |θ| masks (one line per k, its chance level dotted), right the overlap of the top-k
    eigenspaces (per method in `eigenspace`, e.g. exact solid, sketch dashed). Series hold one
    value (or None) per step. Saved to `path`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.asarray(steps, np.float64)
    styles = ("o-", "s--", "^:")
    for i, k in enumerate(sorted(mask_iou)):
        axes[0].plot(x, mask_iou[k], "o-", color=f"C{i}", ms=4, label=f"k = {k}")
        axes[0].axhline(iou_chance[k], color=f"C{i}", ls=":", lw=0.8)
    for style, (method, series) in zip(styles, eigenspace.items(), strict=False):
        for i, k in enumerate(sorted(mask_iou)):
            v = np.asarray([np.nan if a is None else a for a in series.get(k, [])], np.float64)
            if v.size and np.any(np.isfinite(v)):
                label = f"{method} k = {k}"
                axes[1].plot(x, v, style, color=f"C{i}", ms=4, mfc="none", label=label)
    axes[0].set(ylabel="IoU of consecutive top-k |θ| masks (chance dotted)")
    axes[1].set(ylabel="overlap of consecutive top-k eigenspaces")
    for ax in axes:
        _symlog_steps(ax, steps)
        ax.set(xlabel="training step (vs the previous checkpoint)", ylim=(0, 1.02))
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path, title)


def plot_size_sweep(entries: Sequence[Mapping], path: str, title: str = "") -> None:
    """Mask-vs-eigenspace overlap at fixed k / n, one panel per sweep: against the number of
    parameters n (log) for the 'width' sweep, against the number of hidden layers for the
    'depth' sweep. At the last checkpoint exact (solid) and sketched (dashed), at the first
    one (if another) faint, the best k-sparse mask (dotted) and the chance level k/n (grey).
    entries: the sweep's settings (`widths`, `sweeps`, `num_params`, `chance`, `checkpoints`
    with 'exact' / 'sketch' overlaps). Saved to `path`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, sweep in zip(axes, ("width", "depth"), strict=True):
        runs = sorted((e for e in entries if sweep in e["sweeps"]), key=lambda e: e["num_params"])
        if not runs:
            ax.axis("off")
            continue
        if sweep == "width":
            x = np.asarray([e["num_params"] for e in runs], np.float64)
            ax.set(xscale="log", xlabel="parameters n")
        else:
            x = np.asarray([len(e["widths"]) for e in runs], np.float64)
            ax.set(xlabel="hidden layers", xticks=x)

        def series(index, kind, field, runs=runs):
            return np.asarray(
                [e["checkpoints"][index].get(kind, {}).get(field, np.nan) for e in runs], float
            )

        first = [len(e["checkpoints"]) > 1 for e in runs]
        top = []
        for kind, style, color in (("exact", "o-", "C0"), ("sketch", "s--", "C3")):
            last = series(-1, kind, "overlap")
            if np.any(np.isfinite(last)):
                ax.plot(x, last, style, color=color, ms=4, label=kind)
                top.append(np.nanmax(last))
            start = np.where(first, series(0, kind, "overlap"), np.nan)
            if np.any(np.isfinite(start)):
                ax.plot(x, start, style, color=color, ms=3, alpha=0.35,
                        label=f"{kind}, step {runs[0]['checkpoints'][0]['step']}")  # fmt: skip
        best = series(-1, "exact", "best_mask")
        best = np.where(np.isfinite(best), best, series(-1, "sketch", "best_mask"))
        ax.plot(x, best, "^:", color="C2", ms=4, label="best k-sparse mask")
        ax.plot(x, [e["chance"] for e in runs], "-", color="0.5", label="chance k/n")
        ylim = min(1.02, 1.3 * max(top + [float(np.nanmax(best))]))
        for xi, e in zip(x, runs, strict=True):
            name = "-".join(map(str, e["widths"])) + f" (n={e['num_params']})"
            ax.annotate(name, (xi, 0.02 * ylim), fontsize=6, rotation=90)
        ax.set(ylabel="overlap at k / n fixed", title=f"{sweep} sweep", ylim=(0, ylim))
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    _save(fig, path, title)


def plot_role_block_spectra(
    grid: Sequence[float], densities: Mapping[str, Sequence[float]], scale: str, path: str,
    title: str = "",
) -> None:  # fmt: skip
    """Block-wise spectral densities (SLQ, on one shared grid, in eigenvalues or their symlog:
    `scale`) of a transformer's role blocks, one panel per role kind (attention Q/K/V/O, MLP,
    embeddings and output, LayerNorm), log-scaled density. Saved to `path` (PNG)."""
    grid = np.asarray(grid)
    kinds = {"attention": ("/Q", "/K", "/V", "/O"), "mlp": ("mlp_in", "mlp_out"),
             "layernorm": ("/scale", "/bias")}  # fmt: skip

    def kind(name):
        return next((k for k, tags in kinds.items() if any(t in name for t in tags)), "embed/out")

    panels = ["attention", "mlp", "embed/out", "layernorm"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), sharex=True)
    for ax, panel in zip(axes, panels, strict=True):
        for i, (name, dens) in enumerate(x for x in densities.items() if kind(x[0]) == panel):
            ax.semilogy(grid, np.maximum(np.asarray(dens), 1e-12), color=f"C{i % 10}", lw=1,
                        label=name)  # fmt: skip
        ax.set_ylim(bottom=1e-8)
        xlabel = "sign(λ) log10(1 + |λ|/τ)" if scale == "symlog" else "eigenvalue λ"
        ax.set(xlabel=xlabel, ylabel="density (grid mass)", title=panel)
        ax.legend(fontsize=6, ncol=2)
    _save(fig, path, title)


def plot_heterogeneity(
    by_model: Mapping[str, Mapping], last: Mapping, path: str, title: str = ""
) -> None:
    """Left: mean pairwise JS distance between block spectra by model and step (Zhang et
    al.'s heterogeneity; by_model[name] = {'mean_js_distance', 'noise_floor'}), the split-half
    noise floor of each as a black tick; right: the JS distance matrix of `last` ({'names',
    'distances'})."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(by_model)
    axes[0].bar(range(len(names)), [by_model[n]["mean_js_distance"] for n in names], color="C0",
                label="between blocks")  # fmt: skip
    floors = [by_model[n].get("noise_floor") for n in names]
    xs = [i for i, f in enumerate(floors) if f is not None]
    axes[0].scatter(xs, [floors[i] for i in xs], marker="_", s=400, color="k",
                    label="noise floor (same block, split probes)")  # fmt: skip
    axes[0].legend(fontsize=8, loc="upper right")
    axes[0].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes[0].set(ylabel="mean JS distance between blocks", title="block heterogeneity", ylim=(0, 1))
    dist = np.asarray(last["distances"])
    im = axes[1].imshow(dist, vmin=0, vmax=1, cmap="viridis")
    axes[1].set_xticks(range(len(dist)), last["names"], rotation=90, fontsize=6)
    axes[1].set_yticks(range(len(dist)), last["names"], fontsize=6)
    axes[1].set_title("JS distance between role blocks (last checkpoint)")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    _save(fig, path, title)


def plot_qkvo_norms(
    steps: Sequence[int], norms: Sequence[Mapping[str, Mapping[str, float]]], path: str,
    title: str = "",
) -> None:  # fmt: skip
    """‖H_jj‖_F of every Q, K, V and O diagonal block over training (log scale, error bars:
    the Gaussian-probe standard errors), one line per block."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    names = list(norms[0])
    styles = {"Q": ("C0", "o"), "K": ("C1", "s"), "V": ("C2", "^"), "O": ("C3", "d")}
    for name in names:
        color, marker = styles.get(name.rsplit("/", 1)[-1], ("C7", "."))
        ls = "-" if name.startswith("block_0/") else "--"
        ax.errorbar(steps, [n[name]["norm"] for n in norms], [n[name]["stderr"] for n in norms],
                    color=color, marker=marker, ls=ls, label=name, capsize=2)  # fmt: skip
    ax.set_yscale("log")
    _symlog_steps(ax, steps)
    ax.set(xlabel="training step", ylabel="‖H_jj‖_F", title="Q/K/V/O diagonal blocks")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path, title)


def plot_head_spectra(heads: Mapping[str, Mapping], path: str, title: str = "") -> None:
    """Top eigenvalue of every attention head's block (results' `heads`: 'block_<l>/<R>/head_<h>'
    -> {top_eigenvalues}) as one heat map per role R in Q, K, V, O: rows layers, columns
    heads, colour log10 λ₁."""
    parsed = {}
    for name, rec in heads.items():
        block, role, head = name.split("/")
        parsed[(role, int(block.split("_")[1]), int(head.split("_")[1]))] = rec["top_eigenvalues"][
            0
        ]
    layers = 1 + max(k[1] for k in parsed)
    num_heads = 1 + max(k[2] for k in parsed)
    values = np.log10(np.maximum(np.array(list(parsed.values()), float), 1e-12))
    fig, axes = plt.subplots(1, 4, figsize=(12, 1.2 + 0.6 * layers), squeeze=False)
    for ax, role in zip(axes[0], "QKVO", strict=True):
        grid = np.full((layers, num_heads), np.nan)
        for (r, layer, head), top in parsed.items():
            if r == role:
                grid[layer, head] = np.log10(max(top, 1e-12))
        im = ax.imshow(grid, vmin=values.min(), vmax=values.max(), cmap="viridis", aspect="auto")
        ax.set(title=role, xlabel="head", ylabel="layer", xticks=range(num_heads),
               yticks=range(layers))  # fmt: skip
    fig.colorbar(im, ax=axes[0, -1], label="log10 top eigenvalue")
    _save(fig, path, title)


def plot_scale_growth(
    scales: Sequence[float],
    norms: Mapping[str, Mapping[str, np.ndarray]],
    blocks: Sequence[str],
    powers: Mapping[str, Mapping[str, float]],
    path: str,
    title: str = "",
) -> None:
    """‖·‖_F of diagonal blocks against the input scale σ, log-log: rows are blocks (Q, V),
    columns the parts (H, GGN, H − GGN); one line per LayerNorm variant (norms[variant][part]
    (s, b)); dashed: the theory's power σ^p where `powers[block][part]` gives one, anchored at
    the no-LayerNorm curve's smallest σ."""
    parts = ("hessian", "outer", "functional")
    labels = {"hessian": "H", "outer": "GGN (outer product)", "functional": "H − GGN (functional)"}
    fig, axes = plt.subplots(len(blocks), 3, figsize=(11, 3.2 * len(blocks)), squeeze=False)
    s = np.asarray(scales)
    for i, block in enumerate(blocks):
        for j, part in enumerate(parts):
            ax = axes[i, j]
            for k, (variant, by_part) in enumerate(norms.items()):
                ax.loglog(s, np.asarray(by_part[part])[:, i], marker=".", color=f"C{k}",
                          label=f"LayerNorm {variant}")  # fmt: skip
            power = powers.get(block, {}).get(part)
            if power is not None and "none" in norms:
                y0 = np.asarray(norms["none"][part])[0, i]
                ax.loglog(s, y0 * (s / s[0]) ** power, "k--", lw=0.8, label=f"σ^{power:g}")
            ax.set(title=f"W_{block}: {labels[part]}", xlabel="input scale σ",
                   ylabel="‖·‖_F")  # fmt: skip
            ax.legend(fontsize=7)
    _save(fig, path, title)


def plot_vocab_ratios(rows: Sequence[Mapping], path: str, title: str = "") -> None:
    """The vocabulary-row block ratio against V (log-log), at initialisation and trained, with
    the per-token values as points."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, which in enumerate(("init", "trained")):
        got = [r for r in rows if which in r]
        if not got:
            continue
        v = np.asarray([r["vocab"] for r in got])
        ax.loglog(v, [r[which]["mean"] for r in got], "o-", color=f"C{i}", label=which)
        for r in got:
            ax.scatter([r["vocab"]] * len(r[which]["per_token"]), r[which]["per_token"],
                       s=8, color=f"C{i}", alpha=0.4)  # fmt: skip
    ax.set(xlabel="vocabulary size V", ylabel="mean ‖H_ij‖²_F / ‖H_jj‖²_F",
           title="vocabulary-row blocks of the unembedding")  # fmt: skip
    ax.legend()
    _save(fig, path, title)
