r"""Config of experiments/attention_growth.py: how the query and value blocks of a GPT's
Hessian grow with the scale σ of its input embeddings (Ormaniec, Dangel, Singh, ICLR 2025),
without LayerNorm and with pre-LayerNorm.

Default: a one-layer, one-head GPT (V = 256 bytes, context 32, width 64: 84,544 parameters
without LayerNorm), 16 windows of bytes, σ = 10^-2 .. 10^1 in 13 log steps, 16 Gaussian probes
per block norm (the same probes at every σ), 3 seeds (init and data). Data: the running
interpreter's standard library (no files); the README's numbers use the fixed corpus,
`--config.data.source=shared`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_seeds = 3  # seeds seed, seed + 1, ...: init, data windows and probes

    c.data = ml_collections.ConfigDict()
    c.data.source = "stdlib"  # stdlib | shared | a text file or folder
    c.data.max_bytes = 500_000
    c.data.context = 32  # window length T
    c.data.num_sequences = 16  # windows the Hessian averages over

    c.model = ml_collections.ConfigDict()
    c.model.width = 64
    c.model.num_heads = 1
    c.model.num_layers = 1
    c.model.mlp_ratio = 4
    c.model.variants = ("none", "pre")  # LayerNorm: none (Ormaniec's setting) | pre

    c.growth = ml_collections.ConfigDict()
    c.growth.log10_min = -2.0  # σ grid: 10^log10_min .. 10^log10_max
    c.growth.log10_max = 1.0
    c.growth.num_scales = 13
    c.growth.fit_max = 0.1  # slopes compared with the theory: σ <= fit_max (small-σ band)
    c.growth.num_probes = 16  # Gaussian probes per block and part (0 = exact)
    return c
