"""The CPU ablation study: ELECTRA-Small's width (hidden 256, 4 heads, embeddings 128) at 4
layers, pre-trained on the reproduction's 8 Wikipedia shards, each variant at the baseline's
FLOPs, then SST-2, CoLA and RTE from each checkpoint.

    python -m experiments.ablate --study cpu_ablate --glue-dir ../shared/data/glue

Expected: 1,200 steps of 32 x 128 (4.9M tokens) at 1.7-2.3 s/step with one thread beside other
work on a 2-core CPU (about 40 minutes) plus GLUE, per variant and seed; seed 0 of every
variant first (11 variants, about 10 hours), then seeds 1 and 2 where they can decide.
Reached: not yet run to completion (records/README.md will link the result).
"""

from electra_fn.study import Variant
from experiments.configs.cpu_reproduce import FLAGS as REPRODUCTION

# The reproduction's data and batch (experiments/configs/cpu_reproduce.py), fewer steps.
FLAGS = {**REPRODUCTION, "steps": 1200}

GLUE = {"tasks": "sst2,cola,rte", "seeds": 3, "max_train_examples": 2000}

_NO_DROPOUT = {"hidden_dropout": 0.0, "attention_dropout": 0.0}

STUDY = {
    "model": {"num_layers": 4, "name": "small-4L"},  # Small's width at a third of its depth
    "seeds": [0, 1, 2],
    "variants": [
        Variant("baseline", why="the paper's recipe at this scale"),
        Variant("dropout-0", model=_NO_DROPOUT,
                why="pre-training sees each token a few times at most, so dropout may only "
                    "slow learning (Cramming, Geiping & Goldstein 2022, drop it)"),
        Variant("heads-1", model={"num_heads": 1}, why="fewer, wider heads at the same width"),
        Variant("heads-2", model={"num_heads": 2}, why="fewer, wider heads at the same width"),
        Variant("heads-8", model={"num_heads": 8}, why="more, narrower heads (32 dims each)"),
        Variant("gen-1/8", model={"generator_multiplier": 0.125},
                why="a weaker generator: easier replacements (paper, Fig. 3: 1/4-1/2 best)"),
        Variant("gen-1/2", model={"generator_multiplier": 0.5},
                why="a stronger generator: harder replacements, more FLOPs per step"),
        Variant("gen-1", model={"generator_multiplier": 1.0},
                why="the released Small++'s full-size generator"),
        Variant("gdes", model={"embedding_sharing": "gdes"},
                why="ours: the generator's MLM and the discriminator's RTD gradients both move "
                    "the shared word embeddings; gradient-disentangled sharing (DeBERTaV3, He "
                    "et al. 2021) gives the discriminator a delta of its own (the collapse "
                    "record, 2026-11-29_discriminator-context §4, found the early collapse is "
                    "not this tug of war: this tests the end quality)"),
        Variant("mask-25", recipe={"mask_prob": 0.25},
                why="ours: more replaced positions per sequence give the discriminator more "
                    "signal per token (Wettig et al. 2023 find 40% masking better for MLM)"),
        Variant("gen-delay-25%", recipe={"gen_delay_steps": 300},
                why="ours: a learning generator erases the identity cues through which the "
                    "discriminator escapes its early collapse (2026-11-29_discriminator-"
                    "context §4; a 40% delay kept part of the context there): the generator's "
                    "loss counts from a quarter of the run on"),
    ],
}
