r"""Config of experiments/lm_heads.py: Dong et al.'s static force on a language model's output
layer as the vocabulary grows (bytes, then byte-pair vocabularies trained on the corpus).

Default: a GPT (width 64, 4 heads, 2 layers, context 64) per vocabulary V = 256 (bytes), 1,024,
4,096, 16,384, 32,768, on the training split of the corpus; the Hessian of the chunked
next-token loss (`curvature.LMHeadLoss`, 512-token chunks) on 16 windows (1,024 tokens); the
vocabulary-row block ratio from 4 probed tokens (exact norms: 64 products each) at
initialisation and after `train.steps` Adam steps. Data: the running interpreter's standard
library (no files); the README's numbers use the fixed corpus, `--config.data.source=shared`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "stdlib"  # stdlib | shared | a text file or folder
    c.data.max_bytes = 12_000_000  # training bytes kept (what the tokenizers learn from; V =
    # 32,768 needs about 5 MB of this corpus)
    c.data.context = 64
    c.data.num_sequences = 16  # windows the Hessian averages over
    c.data.cache_dir = ""  # BPE tokenizer cache ("" = $HESSJAX_CACHE/bpe or ~/.cache/...)

    c.model = ml_collections.ConfigDict()
    c.model.vocabs = (256, 1024, 4096, 16384, 32768)  # 256 = bytes; larger: BPE
    c.model.width = 64
    c.model.num_heads = 4
    c.model.num_layers = 2

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300  # Adam steps before the second measurement (0: init only)
    c.train.learning_rate = 3e-3
    c.train.batch_size = 16

    c.hessian = ml_collections.ConfigDict()
    c.hessian.chunk_size = 512  # tokens per logit chunk
    c.hessian.probed = 4  # probed vocabulary rows
    return c
