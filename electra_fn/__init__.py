"""electra-fn: ELECTRA pre-training and fine-tuning as pure functions over pytrees."""

from . import compiling
from .config import FinetuneConfig, ModelConfig, PretrainConfig, PRESETS
from .finetune import (evaluate, init_finetune, init_finetune_state, make_finetune_step,
                       make_predict)
from .hf import load_hf, save_hf, save_hf_classifier
from .model import (classifier_logits, discriminator_hidden, discriminator_logits,
                    finetune_params, generator_hidden, generator_logits, init_classifier,
                    init_params)
from .pretrain import init_opt_state, make_eval_step, make_train_step
from .rng import step_key
from .tree import tree_count

__version__ = "0.1.0"
__all__ = [
    "ModelConfig", "PretrainConfig", "PRESETS", "init_params", "init_classifier",
    "finetune_params", "generator_hidden", "generator_logits", "discriminator_hidden",
    "discriminator_logits", "classifier_logits", "load_hf", "save_hf", "save_hf_classifier",
    "make_train_step",
    "make_eval_step", "init_opt_state", "step_key", "tree_count",
    "FinetuneConfig", "init_finetune", "init_finetune_state",
    "make_finetune_step", "make_predict", "evaluate", "compiling",
]
