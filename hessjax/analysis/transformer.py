"""The Hessian of a transformer by role: partitions of its parameters into token embedding,
positions, per-layer query/key/value/output projections (optionally per head), MLP in/out,
LayerNorm scales and biases and unembedding; block-wise spectral densities and their
heterogeneity (Zhang et al., NeurIPS 2024, "Why Transformers Need Adam: A Hessian
Perspective"); Frobenius norms of the Q, K, V, O diagonal blocks (Ormaniec, Dangel, Singh,
ICLR 2025) and their growth with the input scale; exact-vs-Kronecker overlaps of the
projections with tokens as samples (Wu et al.).

Roles follow the parameter names of `hessjax.models.GPT` / `ViT` ('params/block_0/attn/query/
kernel' -> 'block_0/Q'); any Linen transformer with the same names (or relabelled with
`partition_from_labels`) works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessjax import _checks
from hessjax.analysis.blocks import fit_loglog_slope
from hessjax.curvature.blocks import layer_block_diagonal, partition_from_labels
from hessjax.curvature.kronecker import kron_eigh, kronecker_factors
from hessjax.curvature.layout import ParamLayout, leaf_paths, select_mask
from hessjax.curvature.losses import MeanLoss
from hessjax.curvature.operators import CurvatureOperator, ggn_operator, hessian_operator
from hessjax.linalg.blocks import BlockQuadrature, block_frobenius_sq, block_slq
from hessjax.linalg.density import spectral_density
from hessjax.linalg.lanczos import eigsh
from hessjax.linalg.operator import difference
from hessjax.linalg.partition import Partition
from hessjax.linalg.subspace import OverlapCurve, overlap_curve

Array = jax.Array
PyTree = Any
# Module path (after 'params') -> role of a GPT / ViT leaf; blocks add 'block_<i>/'.
_BLOCK_ROLES = {
    ("attn", "query"): "Q",
    ("attn", "key"): "K",
    ("attn", "value"): "V",
    ("attn", "out"): "O",
    ("mlp", "fc_in"): "mlp_in",
    ("mlp", "fc_out"): "mlp_out",
}
_TOP_ROLES = {
    "token_embed": "embed",
    "position_embed": "pos",
    "patch_embed": "patch_embed",
    "cls_token": "cls_token",
    "unembed": "unembed",
    "head": "head",
}
ATTENTION_ROLES = ("Q", "K", "V", "O")


def _parts(path: str) -> list[str]:
    parts = path.split("/")
    return parts[1:] if parts and parts[0] == "params" else parts


def leaf_role(path: str) -> str:
    """Role of one parameter leaf: 'embed', 'pos', 'patch_embed', 'cls_token', 'unembed',
    'head', 'block_<i>/{Q,K,V,O,mlp_in,mlp_out}', 'block_<i>/ln_attn/scale', ...,
    'ln_final/bias'. Raises ValueError for a leaf no role covers."""
    parts = _parts(path)
    if parts and parts[0] in _TOP_ROLES:
        return _TOP_ROLES[parts[0]]
    if parts and parts[0].startswith("block_") and len(parts) >= 3:
        if tuple(parts[1:3]) in _BLOCK_ROLES:
            return f"{parts[0]}/{_BLOCK_ROLES[tuple(parts[1:3])]}"
        if parts[1] in ("ln_attn", "ln_mlp") and len(parts) == 3:
            return "/".join(parts)
    if len(parts) == 2 and parts[0] == "ln_final":
        return "/".join(parts)
    raise ValueError(
        f"parameter {path!r} has no transformer role (expected the names of "
        "hessjax.models.GPT / ViT); label it with curvature.partition_from_labels instead"
    )


def _head_labels(role: str, path: str, shape: tuple[int, ...], num_heads: int) -> np.ndarray:
    """Per-entry labels of an attention leaf split by head: Q/K/V kernel columns and biases,
    O kernel rows; the O bias (shared by all heads) stays 'block_i/O/bias'."""
    kind = role.rsplit("/", 1)[1]
    last = _parts(path)[-1]
    if kind == "O" and last == "bias":
        return np.full(shape, f"{role}/bias", dtype=object)
    axis = 0 if kind == "O" else len(shape) - 1
    width = shape[axis]
    if width % num_heads:
        raise ValueError(f"{path!r}: {width} features do not split into {num_heads} heads")
    heads = np.arange(width) // (width // num_heads)
    heads = heads.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return np.vectorize(lambda h: f"{role}/head_{h}", otypes=[object])(
        np.broadcast_to(heads, shape)
    )


def role_partition(
    layout: ParamLayout,
    *,
    num_heads: int | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> Partition:
    """Partition of a transformer's (selected) parameters by role (`leaf_role`), in flat order.

    num_heads: split every Q, K, V and O block into heads ('block_0/Q/head_1'; the O bias is
    its own block). groups: merge roles into named blocks, {'attention': ['block_0/Q', ...],
    ...}; every role of the model must be in exactly one group and every named role must
    exist (ValueError naming them otherwise). Raises ValueError for a leaf with no role."""
    labels, roles = [], []
    for path, shape, on in zip(layout.paths, layout.shapes, layout.selected, strict=True):
        if not on:
            continue
        role = leaf_role(path)
        roles.append(role)
        if num_heads is not None and role.rsplit("/", 1)[-1] in ATTENTION_ROLES:
            labels.append(_head_labels(role, path, shape, num_heads))
        else:
            labels.append(np.full(shape, role, dtype=object))
    if groups is not None:
        if num_heads is not None:
            raise ValueError("pass either num_heads or groups, not both")
        labels = _grouped(labels, roles, groups)
    it = iter(labels)
    tree = layout.treedef.unflatten([next(it) if on else 0 for on in layout.selected])
    return partition_from_labels(layout, tree)


def _grouped(labels: list[np.ndarray], roles: list[str], groups) -> list[np.ndarray]:
    owner: dict[str, str] = {}
    for name, members in groups.items():
        for role in members:
            if role not in roles:
                raise ValueError(f"group {name!r} names role {role!r}, which the model lacks; "
                                 f"its roles are {sorted(set(roles))}")  # fmt: skip
            if role in owner:
                raise ValueError(f"role {role!r} is in groups {owner[role]!r} and {name!r}")
            owner[role] = name
    left = sorted(set(roles) - set(owner))
    if left:
        raise ValueError(f"the groups leave parameters out: roles {left} are in no group")
    return [np.full(x.shape, owner[r], dtype=object) for x, r in zip(labels, roles, strict=True)]


def role_block_diagonal(op: CurvatureOperator, partition: Partition) -> CurvatureOperator | None:
    """`curvature.layer_block_diagonal` when every block is a union of whole leaves (restricted
    products), None when blocks split leaves (heads): solvers then use masked products."""
    try:
        return layer_block_diagonal(op, partition)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- heterogeneity


class BlockHeterogeneity(NamedTuple):
    """Block-wise spectral densities and their pairwise Jensen-Shannon distances.

    names (b,); grid (G,) shared grid (eigenvalues, or their symlog, see `scale`); scale;
    densities (b, G), each a probability vector
    on the grid (Gaussian-smoothed SLQ measure, renormalised); distances (b, b) JS distance
    sqrt(JSD) with base-2 logarithms, in [0, 1]; mean: the mean over pairs i < j (Zhang et
    al.'s heterogeneity, "JS0" at initialisation).

    The estimator's own noise, from the two halves A, B of the probes (None for one probe):
    noise_floor, the mean over blocks of JS(A_i, B_i) (the same block, independent probes);
    between_halves, the mean over pairs i ≠ j of JS(A_i, B_j) (different blocks, equally
    noisy). Blocks differ beyond the noise only where between_halves exceeds noise_floor."""

    names: tuple[str, ...]
    grid: np.ndarray
    scale: str
    densities: np.ndarray
    distances: np.ndarray
    mean: float
    noise_floor: float | None
    between_halves: float | None


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance sqrt(½ KL(p‖m) + ½ KL(q‖m)), m = ½(p + q), log base 2, of two
    probability vectors (normalised here): 0 for equal, 1 for disjoint supports."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.shape != q.shape or p.ndim != 1 or np.any(p < 0) or np.any(q < 0):
        raise ValueError(f"need two non-negative vectors of one shape, got {p.shape}, {q.shape}")
    if not (p.sum() > 0 and q.sum() > 0):
        raise ValueError("a density with no mass has no Jensen-Shannon distance")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        on = a > 0
        return float(np.sum(a[on] * np.log2(a[on] / m[on])))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


SCALES = ("symlog", "linear")


def symlog(values: np.ndarray, threshold: float) -> np.ndarray:
    """sign(λ) log10(1 + |λ| / threshold): linear below `threshold`, log above."""
    return np.sign(values) * np.log10(1 + np.abs(values) / threshold)


def block_heterogeneity(
    quad: BlockQuadrature,
    names: Sequence[str],
    *,
    num_points: int = 1000,
    sigma_ratio: float = 0.01,
    scale: str = "symlog",
    threshold: float = 1e-4,
) -> BlockHeterogeneity:
    """Densities of every block on one grid spanning all blocks' Ritz values (5σ margins,
    σ = sigma_ratio × the span) and their pairwise JS distances (`js_distance`).

    scale 'linear' smooths the eigenvalues themselves: blocks whose spectra are all small
    next to the largest block's then share one peak at 0 and look alike whatever their
    scale. 'symlog' (default) places every Ritz value at `symlog`(λ, threshold × max |λ|),
    so blocks differing in scale by a decade are a grid-span apart (the grid is in those
    units); Zhang et al. compare block spectra of very different scales, which is what this
    measures."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    nodes = np.asarray(quad.nodes, np.float64)
    b = nodes.shape[1]
    if len(names) != b:
        raise ValueError(f"{len(names)} names for {b} blocks")
    if scale == "symlog":
        top = float(np.max(np.abs(nodes)))
        nodes = symlog(nodes, threshold * top if top > 0 else 1.0)
        quad = quad._replace(nodes=nodes)
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = sigma_ratio * max(hi - lo, np.finfo(np.float32).eps * max(abs(hi), 1.0))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)

    def densities(q):
        d = np.stack(
            [np.asarray(spectral_density(q.block(i), grid, sigma), np.float64) for i in range(b)]
        )
        return d / d.sum(axis=1, keepdims=True)

    dens = densities(quad)
    dist = np.zeros((b, b))
    for i in range(b):
        for j in range(i + 1, b):
            dist[i, j] = dist[j, i] = js_distance(dens[i], dens[j])
    mean = float(dist[np.triu_indices(b, 1)].mean()) if b > 1 else 0.0
    noise = between = None
    half = nodes.shape[0] // 2
    if half:
        a = densities(quad._replace(nodes=quad.nodes[:half], weights=quad.weights[:half]))
        c = densities(quad._replace(nodes=quad.nodes[half : 2 * half],
                                    weights=quad.weights[half : 2 * half]))  # fmt: skip
        cross = np.array([[js_distance(a[i], c[j]) for j in range(b)] for i in range(b)])
        noise = float(np.mean(np.diag(cross)))
        between = float(cross[~np.eye(b, dtype=bool)].mean()) if b > 1 else None
    return BlockHeterogeneity(tuple(names), grid, scale, dens, dist, mean, noise, between)


def block_spectra_heterogeneity(
    op: CurvatureOperator,
    partition: Partition,
    *,
    num_probes: int,
    num_steps: int,
    key: Array,
    sigma_ratio: float = 0.01,
    block_diagonal: CurvatureOperator | None = None,
) -> tuple[BlockQuadrature, BlockHeterogeneity]:
    """`linalg.block_slq` of every block of `partition` and `block_heterogeneity` of the
    result. block_diagonal: None (masked products: one compilation, b full products a step)
    or `role_block_diagonal(op, partition)` (restricted products: one compilation per block;
    each still runs a full forward and backward pass, so on a 135k-parameter GPT they were no
    cheaper per step)."""
    quad = block_slq(
        op, partition, num_probes=num_probes, num_steps=num_steps, key=key,
        block_diagonal=block_diagonal,
    )  # fmt: skip
    return quad, block_heterogeneity(quad, partition.names, sigma_ratio=sigma_ratio)


# ----------------------------------------------------------------------------- Q/K/V/O norms


class BlockNormEstimate(NamedTuple):
    """‖H_jj‖_F of chosen diagonal blocks: names (c,), norms (c,), stderr (c,) (delta
    method from the squared-norm estimate; 0 when exact), num_matvecs."""

    names: tuple[str, ...]
    norms: np.ndarray
    stderr: np.ndarray
    num_matvecs: int

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {n: {"norm": float(v), "stderr": float(e)}
                for n, v, e in zip(self.names, self.norms, self.stderr, strict=True)}  # fmt: skip


def diagonal_block_norms(
    op: CurvatureOperator,
    partition: Partition,
    names: Sequence[str],
    *,
    num_probes: int | None = None,
    key: Array | None = None,
) -> BlockNormEstimate:
    """Frobenius norms ‖H_jj‖_F of the diagonal blocks `names` (e.g. every 'block_i/Q', 'K',
    'V', 'O'): exact from unit probes (num_probes None: n_j products each) or an unbiased
    Gaussian-probe estimate of ‖H_jj‖²_F (num_probes products each; `linalg.block_frobenius_sq`
    with the block's own rows)."""
    cols = np.asarray([partition.index(n) for n in names])
    est = block_frobenius_sq(op, partition, columns=cols, num_probes=num_probes, key=key)
    sq = np.asarray(est.sq, np.float64)[cols, np.arange(cols.size)]
    se = np.asarray(est.stderr, np.float64)[cols, np.arange(cols.size)]
    norms = np.sqrt(np.maximum(sq, 0.0))
    stderr = np.where(norms > 0, se / (2 * np.maximum(norms, 1e-300)), 0.0)
    return BlockNormEstimate(tuple(names), norms, stderr, est.num_matvecs)


# ----------------------------------------------------------------------------- Kronecker


class KroneckerOverlap(NamedTuple):
    """Exact-vs-Kronecker comparison of one dense layer's kernel block.

    layer: module path; size: in·out; exact_top, kron_top: (k,) top eigenvalues of the exact
    block (Lanczos on the restricted Hessian) and of kron(A, G); curve: top-k overlap vs k
    (with chance k/size); num_matvecs: Hessian products spent on the exact block."""

    layer: str
    size: int
    exact_top: np.ndarray
    kron_top: np.ndarray
    curve: OverlapCurve
    num_matvecs: int


@_checks.renamed(variables="params")
def kronecker_overlaps(
    model: Any,
    params: Any,
    batch: tuple[Any, Any],
    per_example_loss,
    layers: Sequence[str],
    *,
    k: int,
    key: Array,
    chunk_size: int | None = None,
    tol: float = 1e-4,
) -> list[KroneckerOverlap]:
    """For each Dense layer (Linen module path, e.g. 'block_0/attn/query'): the top-k
    eigenspace of its exact kernel block H_K (`eigsh` of `hessian_operator(select=kernel)` on
    `batch`) against that of its Kronecker factors kron(A, G) with tokens as samples
    (`curvature.kronecker_factors`: A = E_n Σ_t x_nt x_ntᵀ over the T positions, G the mean
    over positions of the exact output Hessians' diagonal blocks, cross-token terms dropped),
    and their overlap curve. batch = (inputs (N, T), targets (N, T)); the exact per-sample
    output Hessians cost (T·out)² memory per sample in chunks of `chunk_size`, so keep T·out
    to a few thousand."""
    loss_fn = MeanLoss(model.apply, per_example_loss)
    data = jax.tree_util.tree_map(lambda x: x[None], tuple(batch))
    out = []
    for i, layer in enumerate(layers):
        factors = kronecker_factors(
            model, params, batch, per_example_loss, layer, chunk_size=chunk_size
        )
        kron = kron_eigh(factors, k)
        op = hessian_operator(loss_fn, params, data, select=f"{layer}/kernel")
        exact = eigsh(op, k, key=jax.random.fold_in(key, i), tol=tol)
        curve = overlap_curve(np.asarray(exact.eigenvectors), np.asarray(kron.eigenvectors))
        out.append(KroneckerOverlap(
            layer, op.size, np.asarray(exact.eigenvalues), np.asarray(kron.eigenvalues), curve,
            int(exact.num_matvecs),
        ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- input scale

# Leading-order powers of σ (the input scale) in ‖H_jj‖_F of the query and value kernels of a
# softmax self-attention layer without LayerNorm (Ormaniec et al. 2025, "growth rates"): the
# outer-product part (GGN) grows as σ⁶ for W_Q and σ² for W_V, the functional part (H − GGN) of
# W_Q as σ⁵, so H_QQ follows σ⁵ at small σ. LayerNorm removes the dependence.
ORMANIEC_EXPONENTS = {"Q": {"hessian": 5, "outer": 6, "functional": 5}, "V": {"outer": 2}}
GROWTH_PARTS = ("hessian", "outer", "functional")


class ScaleGrowth(NamedTuple):
    """Diagonal-block Frobenius norms against the input scale σ.

    scales (s,); names (b,); norms, stderr: {part: (s, b)} for part 'hessian' (H), 'outer'
    (the GGN Jᵀ H_out J) and 'functional' (H − GGN), stderr 0 when exact; slopes: {part: (b,)}
    least-squares slope of log ‖·‖_F on log σ (NaN where a norm is 0); num_matvecs: products
    of all parts (one product of H − GGN counts two)."""

    scales: np.ndarray
    names: tuple[str, ...]
    norms: dict[str, np.ndarray]
    stderr: dict[str, np.ndarray]
    slopes: dict[str, np.ndarray]
    num_matvecs: int


def _matching(paths: list[str], pattern: str, what: str) -> list[str]:
    hits = [p for p, on in zip(paths, select_mask(paths, pattern), strict=True) if on]
    if not hits:
        raise ValueError(f"{what} {pattern!r} matches no parameter; leaves are {paths}")
    return hits


def rescaled(params: PyTree, patterns: Sequence[str], scale: float) -> PyTree:
    """`params` with every leaf matching a path pattern in `patterns` replaced by
    scale · leaf / rms(leaf): an input layer (embeddings) initialised at standard deviation
    `scale` with the same draw."""
    paths = leaf_paths(params)
    chosen = {p for pattern in patterns for p in _matching(paths, pattern, "scaled leaf")}
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = []
    for path, leaf in zip(paths, leaves, strict=True):
        if path in chosen:
            rms = jnp.sqrt(jnp.mean(jnp.square(leaf)))
            if not float(rms) > 0:
                raise ValueError(f"leaf {path!r} is zero and cannot be rescaled")
            leaf = leaf * (scale / rms)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def log_slopes(scales: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Least-squares slope of log norms (s, b) on log scales (s,) per column: (b,), NaN for a
    column with a zero norm."""
    return np.asarray([fit_loglog_slope(scales, col)[0] if np.all(col > 0) else np.nan
                       for col in np.asarray(norms).T])  # fmt: skip


def input_scale_growth(
    model_fn: Any,
    per_example_loss: Any,
    params: PyTree,
    data: tuple[Any, Any],
    *,
    blocks: Mapping[str, str],
    scaled: Sequence[str],
    scales: Sequence[float],
    num_probes: int | None = None,
    key: Array | None = None,
) -> ScaleGrowth:
    """‖H_jj‖_F, ‖GGN_jj‖_F and ‖(H − GGN)_jj‖_F of chosen parameter blocks as the input scale σ
    varies (Ormaniec et al. 2025): for each σ in `scales` the leaves matching `scaled` (e.g.
    ('token_embed', 'position_embed')) are set to σ · leaf / rms(leaf) (`rescaled`), and each
    block (name -> path pattern, e.g. {'Q': 'block_0/attn/query/kernel'}) is measured on the
    curvature restricted to the blocks' leaves. data: (inputs, targets) with a leading
    microbatch axis, as for `ggn_operator`. num_probes None: exact (n_j products per block and
    part); else Gaussian probes with standard errors, the same probes at every σ (needs key).
    Compare `slopes` with `ORMANIEC_EXPONENTS`."""
    scales = np.asarray(scales, np.float64)
    if scales.ndim != 1 or scales.size < 2 or not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"scales must be >= 2 positive finite numbers, got {scales.tolist()}")
    if np.unique(scales).size != scales.size:
        raise ValueError(f"scales must be distinct, got {scales.tolist()}")
    if not blocks:
        raise ValueError("blocks is empty: name at least one block, e.g. {'Q': 'query/kernel'}")
    paths = leaf_paths(params)
    owner: dict[str, str] = {}
    for name, pattern in blocks.items():
        for path in _matching(paths, pattern, f"block {name!r}:"):
            if path in owner:
                raise ValueError(f"leaf {path!r} is in blocks {owner[path]!r} and {name!r}")
            owner[path] = name
    rescaled(params, scaled, 1.0)  # checks the patterns before any product
    select = sorted(owner)
    labels = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(params), [owner.get(p, 0) for p in paths]
    )
    names = tuple(blocks)
    loss = MeanLoss(model_fn, per_example_loss)
    norms = {part: [] for part in GROWTH_PARTS}
    stderr = {part: [] for part in GROWTH_PARTS}
    spent = 0
    for scale in scales:
        p = rescaled(params, scaled, float(scale))
        hess = hessian_operator(loss, p, data, select=select)
        ggn = ggn_operator(model_fn, per_example_loss, p, data, select=select)
        partition = partition_from_labels(hess.layout, labels)
        ops = {"hessian": hess, "outer": ggn, "functional": difference(hess, ggn)}
        for i, part in enumerate(GROWTH_PARTS):
            probe_key = None if key is None else jax.random.fold_in(key, i)
            est = diagonal_block_norms(
                ops[part], partition, names, num_probes=num_probes, key=probe_key
            )
            norms[part].append(est.norms)
            stderr[part].append(est.stderr)
            spent += est.num_matvecs * (2 if part == "functional" else 1)
    norms_arr = {part: np.asarray(v) for part, v in norms.items()}
    return ScaleGrowth(
        scales, names, norms_arr, {part: np.asarray(v) for part, v in stderr.items()},
        {part: log_slopes(scales, v) for part, v in norms_arr.items()}, spent,
    )  # fmt: skip


# ----------------------------------------------------------------------------- vocabulary


class VocabularyBlockRatio(NamedTuple):
    """Dong et al.'s block ratios on a language model's output layer.

    vocab_size V; tokens (c,) the probed vocabulary ids j; per_token (c,) mean over every other
    token i of ‖H_ij‖²_F / ‖H_jj‖²_F; mean: their mean; num_matvecs: products spent."""

    vocab_size: int
    tokens: np.ndarray
    per_token: np.ndarray
    mean: float
    num_matvecs: int


def vocabulary_block_ratio(
    loss_fn: Any,
    params: PyTree,
    data: PyTree,
    *,
    kernel_path: str,
    probed: int,
    key: Array,
    transposed: bool = False,
) -> VocabularyBlockRatio:
    """The static-force ratio of Dong et al. on a language-model head: blocks are the
    unembedding's vocabulary rows (the d weights of output token c: column c of the (d, V)
    leaf at `kernel_path`, or row c of a (V, d) tied embedding with transposed=True) of the
    Hessian restricted to that leaf; ‖H_ij‖²_F / ‖H_jj‖²_F averaged over `probed` random
    tokens j and every other token i. Exact norms: d products per probed token. loss_fn and
    data as for `hessian_operator` (an `LMHeadLoss` keeps the products lean at large V)."""
    op = hessian_operator(loss_fn, params, data, select=kernel_path)
    (shape,) = [s for s, on in zip(op.layout.shapes, op.layout.selected, strict=True) if on]
    if len(shape) != 2:
        raise ValueError(f"{kernel_path!r} must be a 2-D kernel, got shape {shape}")
    vocab = shape[0] if transposed else shape[1]
    if not 2 <= probed <= vocab:
        raise ValueError(f"probed must be in [2, V = {vocab}], got {probed}")
    ids = np.arange(vocab)[:, None] if transposed else np.arange(vocab)[None, :]
    labels = jax.tree_util.tree_unflatten(
        op.layout.treedef,
        [np.broadcast_to(ids, s) if on else 0
         for s, on in zip(op.layout.shapes, op.layout.selected, strict=True)],
    )  # fmt: skip
    part = partition_from_labels(op.layout, labels)
    tokens = np.sort(np.asarray(jax.random.choice(key, vocab, (probed,), replace=False)))
    cols = np.asarray([part.index(str(int(t))) for t in tokens])
    est = block_frobenius_sq(op, part, columns=cols)
    sq = np.asarray(est.sq, np.float64)  # (V, c)
    own = sq[cols, np.arange(cols.size)]
    others = np.ones_like(sq, bool)
    others[cols, np.arange(cols.size)] = False
    per_token = np.asarray([np.mean(sq[others[:, a], a]) / own[a] for a in range(cols.size)])
    return VocabularyBlockRatio(vocab, tokens, per_token, float(per_token.mean()),
                                int(est.num_matvecs))  # fmt: skip
