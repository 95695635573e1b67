r"""Dong et al.'s static force on a language model's output layer, as the vocabulary grows.

  python -m experiments.lm_heads                               # no files needed
  python -m experiments.lm_heads --config.data.source=shared   # the fixed corpus

Dong et al. argue that the Hessian's near block-diagonal structure comes from the number of
output classes C, with the off-diagonal blocks shrinking against the diagonal ones as C grows,
and point at language models. For every vocabulary size V (bytes for V = 256, else a byte-pair
tokenizer trained on the training split, `data.bpe_tokens`) this binary builds a GPT, takes
the Hessian of its next-token loss with the chunked head (`curvature.LMHeadLoss`: no
(tokens × V) logits), and measures the mean ratio ‖H_ij‖²_F / ‖H_jj‖²_F between the
unembedding's vocabulary rows (`analysis.transformer.vocabulary_block_ratio`) at
initialisation and after Adam training; then the log-log slope of the ratio against V.

Writes into the workdir: results.json (`rows`: per V the ratios, tokens per byte, losses,
seconds; `slopes`), lm_heads.png, and one row_<V>.json per finished vocabulary, reused by a
rerun of the same config. A vocabulary that fails is logged and recorded; the others go on.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from experiments import common, figures
from hessjax import curvature, data, models, training
from hessjax.analysis import blocks as analysis_blocks
from hessjax.analysis import transformer as tr

OUTPUTS = ("results.json", "lm_heads.png")
KERNEL = "params/unembed/kernel"
RULES = {
    "seed": common.NONNEGATIVE_INT,
    "data.source": common.STRING,
    "data.max_bytes": common.POSITIVE_INT,
    "data.context": common.int_at_least(2),
    "data.num_sequences": common.POSITIVE_INT,
    "data.cache_dir": common.STRING,
    "model.vocabs": common.Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and len(v) >= 2
            and len(set(v)) == len(v)
            and all(isinstance(x, int) and (x == 256 or 512 <= x <= 65536) for x in v)
        ),
        "at least two distinct sizes: 256 (bytes) or 512..65,536 (BPE)",
    ),  # fmt: skip
    "model.width": common.POSITIVE_INT,
    "model.num_heads": common.POSITIVE_INT,
    "model.num_layers": common.POSITIVE_INT,
    "train.steps": common.NONNEGATIVE_INT,
    "train.learning_rate": common.POSITIVE,
    "train.batch_size": common.POSITIVE_INT,
    "hessian.chunk_size": common.POSITIVE_INT,
    "hessian.probed": common.int_at_least(2),
}
RELATIONS = (
    common.Relation(
        "hessian.chunk_size",
        lambda c: (
            (c.data.num_sequences * c.data.context) % c.hessian.chunk_size == 0
            and (c.train.batch_size * c.data.context) % c.hessian.chunk_size == 0
        ),
        "a divisor of the tokens of the Hessian batch and of a training batch",
    ),  # fmt: skip
    common.WIDTH_DIVIDES_INTO_HEADS,
)


def _tokens(config, text: data.TextData, vocab: int) -> data.TextData:
    if vocab == data.BYTE_VOCAB:
        return text
    return data.bpe_tokens(text, vocab, cache_dir=config.data.cache_dir or None)


def one_vocabulary(config, text: data.TextData, vocab: int) -> dict:
    """Ratios at init and after training for one vocabulary size."""
    d, m, t = config.data, config.model, config.train
    start = time.perf_counter()
    tokens = _tokens(config, text, vocab)
    key = jax.random.key(config.seed)
    model = models.GPT(vocab, d.context, m.width, m.num_heads, m.num_layers)
    trunk = models.GPT(vocab, d.context, m.width, m.num_heads, m.num_layers, logits=False)
    loss = curvature.LMHeadLoss(trunk.apply, KERNEL, config.hessian.chunk_size)
    x, y = (jnp.asarray(a) for a in data.windows(tokens.train, d.num_sequences, d.context,
                                                 config.seed))  # fmt: skip
    data.check_token_batch((x, y), vocab, d.context)
    params = model.init(key, x[:1])

    def ratio(p, k):
        r = tr.vocabulary_block_ratio(loss, p, (x[None], y[None]), kernel_path=KERNEL,
                                      probed=config.hessian.probed, key=k)  # fmt: skip
        return {"mean": r.mean, "per_token": r.per_token.tolist(), "tokens": r.tokens.tolist(),
                "num_matvecs": r.num_matvecs}  # fmt: skip

    row = {"vocab": vocab, "bytes_per_token": text.train.size / tokens.train.size,
           "num_params": int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
           "init": ratio(params, jax.random.fold_in(key, 1)),
           "init_loss": float(loss(params, (x, y)))}  # fmt: skip
    if t.steps:
        tx, ty = data.windows(tokens.train, 4096, d.context, config.seed + 1)
        params, history = training.train(
            loss, params, jnp.asarray(tx), jnp.asarray(ty),
            optimizer=training.make_optimizer("adam", t.learning_rate), num_steps=t.steps,
            batch_size=t.batch_size, key=jax.random.fold_in(key, 2),
        )  # fmt: skip
        row["trained"] = ratio(params, jax.random.fold_in(key, 3))
        row["trained_loss"] = float(loss(params, (x, y)))
    row["seconds"] = time.perf_counter() - start
    return row


def _slope(rows, which: str) -> dict | None:
    got = [(r["vocab"], r[which]["mean"]) for r in rows if which in r]
    if len(got) < 2:
        return None
    v, ratio = zip(*got, strict=True)
    slope, _ = analysis_blocks.fit_loglog_slope(v, ratio)
    return {"slope": slope, "vocabs": list(v), "ratios": list(ratio)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Every vocabulary (each reused from row_<V>.json when finished under the same config);
    writes results.json and lm_heads.png; returns the results."""
    common.validate(config, RULES, RELATIONS)
    common.prepare_workdir(workdir, OUTPUTS)
    start = time.perf_counter()
    text = data.load_text(config.data.source, max_bytes=config.data.max_bytes)
    sections = ("data", "model", "train", "hessian")
    tag = common.config_hash({k: config[k].to_dict() for k in sections} | {"seed": config.seed})
    rows, failed = [], []
    for vocab in config.model.vocabs:
        path = os.path.join(workdir, f"row_{vocab}.json")
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") == tag:
                logging.info("V = %d: reusing %s", vocab, path)
                rows.append(stored["row"])
                continue
        try:
            row = one_vocabulary(config, text, vocab)
        except Exception as err:  # noqa: BLE001 - one vocabulary must not end the run
            logging.exception("V = %d failed", vocab)
            failed.append({"vocab": vocab, "error": repr(err)})
            continue
        common.write_json(path, {"fingerprint": tag, "row": row})
        logging.info("V = %d: ratio %.3g at init%s (%.0f s)", vocab, row["init"]["mean"],
                     f", {row['trained']['mean']:.3g} trained" if "trained" in row else "",
                     row["seconds"])  # fmt: skip
        rows.append(row)
    results = {
        "config": config.to_dict(),
        "data": text.name,
        "quantity": "mean over probed tokens j and all other tokens i of ‖H_ij‖²_F / ‖H_jj‖²_F,"
        " blocks = the unembedding's vocabulary rows (d weights each)",
        "rows": rows,
        "slopes": {w: _slope(rows, w) for w in ("init", "trained")},
        "failed": failed,
        "seconds_total": time.perf_counter() - start,
    }
    if rows:
        figures.plot_vocab_ratios(rows, os.path.join(workdir, "lm_heads.png"),
                                  title=f"GPT width {config.model.width}, {text.name}")  # fmt: skip
    common.write_json(os.path.join(workdir, "results.json"), results)
    logging.info("slopes %s; wrote results.json and lm_heads.png to %s", results["slopes"],
                 workdir)  # fmt: skip
    return results


if __name__ == "__main__":
    common.run_binary("lm_heads", run)
