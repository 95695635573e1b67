r"""How the query and value blocks of a GPT's Hessian grow with the input scale.

  python -m experiments.attention_growth                                # no files needed
  python -m experiments.attention_growth --config.data.source=shared    # the fixed corpus

Ormaniec, Dangel and Singh (ICLR 2025, "What Does It Mean to Be a Transformer?") derive the
Hessian of softmax self-attention and find that, without LayerNorm, its query block depends on
the input far more steeply than its value block: the outer-product (Gauss-Newton) part of W_Q
grows as σ⁶ and its functional part as σ⁵ in the scale σ of the input, against σ² for W_V; a
pre-LayerNorm removes the dependence. For every LayerNorm variant and seed this binary sets
the token and position embeddings to standard deviation σ (same draw, `rescaled`) over a
log grid and measures ‖H_jj‖_F, ‖GGN_jj‖_F and ‖(H − GGN)_jj‖_F of the block-0 query and
value kernels (`analysis.transformer.input_scale_growth`), then fits log-log slopes over the
small-σ band (σ <= growth.fit_max) and over the whole grid.

Writes into the workdir: results.json (per variant and seed: norms, standard errors and
slopes; mean ± std of the slopes over seeds; the theory's powers) and growth.png (rows: W_Q,
W_V; columns: H, GGN, H − GGN; log-log, one line per variant, dashed theory slopes). A failed
variant or seed is logged and recorded, and the others go on.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import common, figures
from hessjax import curvature, data, models
from hessjax.analysis import transformer as tr

OUTPUTS = ("results.json", "growth.png")
BLOCKS = {"Q": "block_0/attn/query/kernel", "V": "block_0/attn/value/kernel"}
EMBEDDINGS = ("token_embed", "position_embed")
VARIANTS = ("none", "pre")
RULES = {
    "seed": common.NONNEGATIVE_INT,
    "num_seeds": common.POSITIVE_INT,
    "data.source": common.STRING,
    "data.max_bytes": common.POSITIVE_INT,
    "data.context": common.int_at_least(2),
    "data.num_sequences": common.POSITIVE_INT,
    "model.width": common.POSITIVE_INT,
    "model.num_heads": common.POSITIVE_INT,
    "model.num_layers": common.POSITIVE_INT,
    "model.mlp_ratio": common.POSITIVE_INT,
    "model.variants": common.subset_of(VARIANTS),
    "growth.log10_min": common.real_in(-12.0, 12.0),
    "growth.log10_max": common.real_in(-12.0, 12.0),
    "growth.num_scales": common.int_at_least(2),
    "growth.fit_max": common.POSITIVE,
    "growth.num_probes": common.Rule(
        lambda v: isinstance(v, int) and (v == 0 or v >= 2), "0 (exact) or at least 2"
    ),
}
RELATIONS = (
    common.Relation(
        "growth.log10_max",
        lambda c: c.growth.log10_max > c.growth.log10_min,
        "greater than growth.log10_min",
    ),  # fmt: skip
    common.WIDTH_DIVIDES_INTO_HEADS,
    common.Relation(
        "growth.fit_max",
        lambda c: np.sum(_scales(c) <= c.growth.fit_max) >= 2,
        "at least the two smallest scales (10^log10_min ...) for a slope",
    ),
)


def _scales(config) -> np.ndarray:
    g = config.growth
    return np.logspace(g.log10_min, g.log10_max, g.num_scales)


def _band_slopes(growth: tr.ScaleGrowth, fit_max: float) -> dict[str, list[float]]:
    band = growth.scales <= fit_max
    return {part: tr.log_slopes(growth.scales[band], v[band]).tolist()
            for part, v in growth.norms.items()}  # fmt: skip


def one_run(config, text, variant: str, seed: int) -> dict:
    """Norms and slopes of one LayerNorm variant and seed (init, windows and probes)."""
    m, d = config.model, config.data
    model = models.GPT(data.BYTE_VOCAB, d.context, m.width, m.num_heads, m.num_layers,
                       m.mlp_ratio, layer_norm=variant == "pre")  # fmt: skip
    x, y = data.windows(text.train, d.num_sequences, d.context, seed)
    data.check_token_batch((x, y), data.BYTE_VOCAB, d.context)
    x, y = jnp.asarray(x), jnp.asarray(y)
    params = model.init(jax.random.key(seed), x[:1])
    probes = config.growth.num_probes or None
    growth = tr.input_scale_growth(
        model.apply, curvature.token_cross_entropy, params, (x[None], y[None]),
        blocks=BLOCKS, scaled=EMBEDDINGS, scales=_scales(config), num_probes=probes,
        key=jax.random.fold_in(jax.random.key(seed), 1),
    )  # fmt: skip
    return {
        "num_params": int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
        "norms": {p: v.tolist() for p, v in growth.norms.items()},
        "stderr": {p: v.tolist() for p, v in growth.stderr.items()},
        "slopes_small": _band_slopes(growth, config.growth.fit_max),
        "slopes_all": {p: v.tolist() for p, v in growth.slopes.items()},
        "num_matvecs": growth.num_matvecs,
    }


def summary(runs: list[dict]) -> dict:
    """Mean ± std over seeds of the small-σ and whole-grid slopes, per part and block."""
    out = {}
    for band in ("slopes_small", "slopes_all"):
        out[band] = {}
        for part in tr.GROWTH_PARTS:
            values = np.asarray([r[band][part] for r in runs], np.float64)  # (seeds, blocks)
            out[band][part] = {
                name: {"mean": float(np.mean(values[:, j])), "std": float(np.std(values[:, j])),
                       "values": values[:, j].tolist()}
                for j, name in enumerate(BLOCKS)
            }  # fmt: skip
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every variant and seed; writes results.json and growth.png; returns the results."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    text = data.load_text(config.data.source, max_bytes=config.data.max_bytes)
    seeds = [config.seed + i for i in range(config.num_seeds)]
    variants, failed = {}, []
    for variant in config.model.variants:
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                row = one_run(config, text, variant, seed)
            except Exception as err:  # noqa: BLE001 - one failure must not end the run
                logging.exception("LayerNorm %s, seed %d failed", variant, seed)
                failed.append({"variant": variant, "seed": seed, "error": repr(err)})
                continue
            runs.append(row | {"seed": seed})
            s = {p: np.round(v, 2).tolist() for p, v in row["slopes_small"].items()}
            logging.info(
                "LayerNorm %s, seed %d: small-σ slopes (Q, V) %s (%.1f s, %d products)",
                variant, seed, s, time.perf_counter() - t0, row["num_matvecs"],
            )  # fmt: skip
        if runs:
            variants[variant] = {"runs": runs, "summary": summary(runs)}
    scales = _scales(config)
    results = {
        "config": config.to_dict(),
        "data": text.name,
        "blocks": BLOCKS,
        "scales": scales.tolist(),
        "theory_powers": tr.ORMANIEC_EXPONENTS,
        "variants": variants,
        "failed": failed,
        "seconds_total": time.perf_counter() - start,
    }
    if variants:
        mean_norms = {v: {p: np.mean([r["norms"][p] for r in rec["runs"]], axis=0)
                          for p in tr.GROWTH_PARTS} for v, rec in variants.items()}  # fmt: skip
        figures.plot_scale_growth(
            scales, mean_norms, list(BLOCKS), tr.ORMANIEC_EXPONENTS,
            os.path.join(workdir, "growth.png"),
            title=f"GPT {config.model.num_layers} layer, width {config.model.width}, "
                  f"{text.name}; mean of {len(seeds)} seeds",
        )  # fmt: skip
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("wrote results.json and growth.png to %s (%.0f s)", workdir,
                 results["seconds_total"])  # fmt: skip
    return results


if __name__ == "__main__":
    common.run_binary("attention_growth", run)
