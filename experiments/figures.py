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
) -> None:
    """Dynamic force (Dong et al.) over training, two panels saved to `path` (PNG): the loss
    (left axis) and the cross-layer block norm norms[cross] (right axis, default the first
    entry) vs step; and every block norm in `norms` (e.g. ‖H_WV‖_F, ‖H_WW‖_F, ‖H_VV‖_F) on
    a log axis, with ±stderr[name] bars where given (estimated norms). Steps spanning
    decades (checkpoints spaced geometrically) go on a symlog axis."""
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
    for ax in axes:
        _symlog_steps(ax, steps)
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
    one line per strategy (mean over seeds) with a ± std band. Saved to `path` (PNG)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1])
        x = np.arange(1, v.shape[1] + 1)
        mean, std = v.mean(axis=0), v.std(axis=0, ddof=1) if v.shape[0] > 1 else 0 * v[0]
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
    """Two panels saved to `path` (PNG): the sharpness against the step for each step size η,
    with its 2/η line dashed in the same colour, and the full-batch training loss (log scale)
    against the step."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, r in enumerate(runs):
        color, eta = f"C{i}", r["learning_rate"]
        axes[0].plot(r["steps"], r["sharpness"], color=color, label=f"η = {eta:g}")
        axes[0].axhline(2 / eta, color=color, ls="--", lw=0.9, alpha=0.8)
        axes[1].semilogy(r["loss_steps"], r["loss_curve"], color=color, lw=0.8)
    axes[0].set(xlabel="step", ylabel="sharpness λ_max", title="sharpness (dashed: 2/η)")
    axes[0].legend(loc="lower right")
    axes[1].set(xlabel="step", ylabel="training loss", title="full-batch training loss")
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
