"""Does the discriminator use context? Held-out diagnostics and the synthetic learning probe.

* :func:`shuffled_context_metrics`: each token's discriminator logit in its own sentence and
  with the sentence's ordinary tokens shuffled (same tokens, order destroyed). A discriminator
  that reads word order moves its logits; one that scores tokens by identity does not.
* :func:`breakdown_metrics` (:func:`breakdown_from` inside an eval step, through
  :func:`context_metrics`): ROC AUC on the generator's replacements split by the replaced
  token's frequency (rank buckets of the training counts) and by whether the sample was the
  generator's top-1 choice: which replacements a stalled discriminator misses.
* :func:`context_probe`: a tiny ELECTRA trained by the real ``train_step`` on a synthetic corpus
  (:mod:`electra_fn.data.synthetic`) whose replacements only context can reveal.

All return dicts of 0-d tensors (``"{group}/{metric}"``), computed with dropout off.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from . import losses, masking, model, pretrain
from . import rng as rnglib
from .config import ModelConfig, PretrainConfig
from .data import synthetic

Params = dict
# Purpose tag folded into an evaluation key for the shuffle (apart from pretrain's tags).
_K_SHUFFLE = 101
# Frequency-rank buckets: the 100 most frequent tokens, the next 900, the next 9,000, the rest.
FREQ_RANK_EDGES = (100, 1_000, 10_000)


def shuffle_tokens(ids_BxL: torch.Tensor, key: torch.Tensor,
                   special_ids: tuple[int, ...] = masking.DEFAULT_SPECIAL_IDS
                   ) -> tuple[torch.Tensor, ...]:
    """Permute each row's ordinary tokens at random, ``special_ids`` fixed in place.

    Returns ``(shuffled_BxL, to_BxL, from_BxL, valid_BxL)``: for slot j with ``valid``, the
    token at natural position ``from[:, j]`` sits at position ``to[:, j]`` of the shuffle."""
    B, L = ids_BxL.shape
    ordinary_BxL = masking.candidates(ids_BxL, special_ids)
    pos_L = torch.arange(L, device=ids_BxL.device, dtype=torch.float32)
    u_BxL = rnglib.uniform(rnglib.fold_in(key, _K_SHUFFLE), (B, L), ids_BxL.device)
    # Ordinary positions first (natural order / random order), then the specials by position.
    to_BxL = torch.argsort(torch.where(ordinary_BxL, pos_L, L + pos_L), dim=-1)
    from_BxL = torch.argsort(torch.where(ordinary_BxL, u_BxL, 2.0 + pos_L / L), dim=-1)
    shuffled_BxL = torch.scatter(ids_BxL, 1, to_BxL, torch.gather(ids_BxL, 1, from_BxL))
    valid_BxL = torch.arange(L, device=ids_BxL.device)[None, :] < ordinary_BxL.sum(-1,
                                                                                   keepdim=True)
    return shuffled_BxL, to_BxL, from_BxL, valid_BxL


def shuffled_context_metrics(params: Params, batch: dict, key: torch.Tensor,
                             cfg: ModelConfig,
                             special_ids: tuple[int, ...] = masking.DEFAULT_SPECIAL_IDS) -> dict:
    """``shuffle/logit_shift`` (mean |logit in shuffled context - logit in natural context|
    over ordinary tokens), ``shuffle/logit_spread`` (the natural logits' std over the same
    tokens, the scale to read the shift against), the mean replaced-probability in both
    contexts (``shuffle/p_natural``, ``shuffle/p_shuffled``) and ``state/token_spread``
    (:func:`token_spread` of the final states). Unmodified text, dropout off."""
    ids_BxL, mask_BxL = batch["input_ids"], batch["attention_mask"]
    types_BxL = batch.get("token_type_ids")
    shuffled_BxL, to_BxL, from_BxL, valid_BxL = shuffle_tokens(ids_BxL, key, special_ids)
    with torch.no_grad():
        h_BxLxH = model.discriminator_hidden(params, ids_BxL, types_BxL, mask_BxL, cfg)
        nat_BxL = model.discriminator_head(params, h_BxLxH).float()
        shuf_BxL = model.discriminator_logits(params, shuffled_BxL, types_BxL, mask_BxL,
                                              cfg).float()
    states_NxH = h_BxLxH.float()[masking.candidates(ids_BxL, special_ids) & mask_BxL.bool()]
    w = valid_BxL.to(torch.float32)
    n = w.sum().clamp(min=1.0)
    nat_at_from = torch.gather(nat_BxL, 1, from_BxL)
    shuf_at_to = torch.gather(shuf_BxL, 1, to_BxL)
    mean_nat = (nat_at_from * w).sum() / n
    return {
        "shuffle/logit_shift": ((shuf_at_to - nat_at_from).abs() * w).sum() / n,
        "shuffle/logit_spread": (((nat_at_from - mean_nat) ** 2 * w).sum() / n).sqrt(),
        "shuffle/p_natural": (torch.sigmoid(nat_at_from) * w).sum() / n,
        "shuffle/p_shuffled": (torch.sigmoid(shuf_at_to) * w).sum() / n,
        "state/token_spread": token_spread(states_NxH),
    }


def token_spread(states_NxH: torch.Tensor) -> torch.Tensor:
    """Std across tokens of each feature, averaged over features (0-d): about 0.8 for a
    fresh post-LN encoder, near 0 when every token has the same state (a collapsed
    discriminator, which also passes no gradient to learn from)."""
    if states_NxH.shape[0] < 2:
        return torch.zeros((), device=states_NxH.device)
    return states_NxH.std(0).mean()


def frequency_rank_V(token_counts_V: torch.Tensor) -> torch.Tensor:
    """Rank of each token by frequency (0 = the most frequent) [V], ties by id."""
    counts = torch.as_tensor(token_counts_V, dtype=torch.float64)
    order = torch.argsort(-counts, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return rank


def breakdown_metrics(params: Params, batch: dict, key: torch.Tensor, cfg: PretrainConfig,
                      rank_V: torch.Tensor | None = None) -> dict:
    """Discriminator AUC on the generator's replacements (the masking and samples of
    ``electra_forward`` with ``key``), split into groups of replaced tokens against all
    original tokens: ``top1`` / ``not_top1`` (the sample was / was not the generator's
    argmax) and, given ``rank_V`` (:func:`frequency_rank_V`), ``freq{i}`` by the replacing
    token's frequency rank (``FREQ_RANK_EDGES``). Each split partitions the replaced tokens;
    each group also has its ``replaced_fraction`` (its tokens over all tokens) for weighting."""
    with torch.no_grad():
        fake = pretrain.replaced_batch(params, batch, key, cfg, train=False)
        logits_BxL = model.discriminator_logits(params, fake["disc_ids_BxL"],
                                                batch.get("token_type_ids"),
                                                batch["attention_mask"], cfg.model)
    return breakdown_from(fake, logits_BxL, batch["attention_mask"], rank_V)


def breakdown_from(fake: dict, logits_BxL: torch.Tensor, mask_BxL: torch.Tensor,
                   rank_V: torch.Tensor | None = None) -> dict:
    """:func:`breakdown_metrics` from a :func:`pretrain.replaced_batch` and the
    discriminator's logits on it (as an eval step already has them)."""
    logits_BxL = logits_BxL.float()
    B, L = mask_BxL.shape
    P = fake["positions_BxP"].shape[1]
    replaced_BxL = fake["is_replaced_BxL"] & mask_BxL.bool()
    # The slot that wrote each position (the last one where a position was drawn twice).
    slot_P = torch.arange(P, device=mask_BxL.device).expand(B, -1)
    slot_BxL = torch.full((B, L), -1, dtype=torch.long, device=mask_BxL.device).scatter_reduce(
        1, fake["positions_BxP"], torch.where(fake["weights_BxP"] > 0, slot_P, -1), "amax")
    top1_BxP = fake["gen_logits_BxPxV"].argmax(-1) == fake["sampled_BxP"]
    top1_BxL = torch.gather(top1_BxP, 1, slot_BxL.clamp(min=0)) & (slot_BxL >= 0)
    groups = {"top1": replaced_BxL & top1_BxL, "not_top1": replaced_BxL & ~top1_BxL}
    if rank_V is not None:
        # The frequency rank of the token the discriminator sees there.
        rank_BxL = rank_V.to(mask_BxL.device)[fake["disc_ids_BxL"]]
        edges = (0, *FREQ_RANK_EDGES, None)
        for i in range(len(edges) - 1):
            in_bucket = rank_BxL >= edges[i]
            if edges[i + 1] is not None:
                in_bucket = in_bucket & (rank_BxL < edges[i + 1])
            groups[f"freq{i}"] = replaced_BxL & in_bucket
    original_BxL = ~fake["is_replaced_BxL"] & mask_BxL.bool()
    n_real = mask_BxL.to(torch.float32).sum()
    out = {}
    for name, positive_BxL in groups.items():
        # Rows are this group's replaced tokens and every original token.
        rows_BxL = (positive_BxL | original_BxL).long()
        out[f"{name}/disc_auc"] = losses.rtd_auc(logits_BxL, positive_BxL, rows_BxL)
        out[f"{name}/replaced_fraction"] = positive_BxL.to(torch.float32).sum() / n_real
    return out


def context_metrics(cfg: PretrainConfig, rank_V: torch.Tensor | None = None) -> Callable:
    """The ``extra_metrics`` hook of :func:`pretrain.make_eval_step`:
    :func:`shuffled_context_metrics` on the batch and :func:`breakdown_from` on the eval
    step's own replacements and logits."""
    def extra(params: Params, batch: dict, key: torch.Tensor, fake: dict,
              disc_logits_BxL: torch.Tensor) -> dict:
        m = shuffled_context_metrics(params, batch, key, cfg.model, cfg.special_ids)
        m.update(breakdown_from(fake, disc_logits_BxL, batch["attention_mask"], rank_V))
        return m

    return extra


# -- the synthetic learning probe ---------------------------------------------------------
def probe_config(num_tokens: int = 64, seq_len: int = 32, steps: int = 300,
                 **overrides) -> PretrainConfig:
    """The learning probe's tiny ELECTRA (hidden 64, 2 layers, generator 1/2) and recipe:
    batch 32, bias-corrected Adam at lr 2e-3 with a 10% warmup. ``overrides`` go to
    :class:`PretrainConfig`, ``model`` a dict of :class:`ModelConfig` fields."""
    model_fields = dict(vocab_size=synthetic.vocab_size(num_tokens), embedding_size=32,
                        hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                        generator_multiplier=0.5, max_position_embeddings=seq_len,
                        name="probe")
    model_fields.update(overrides.pop("model", {}))
    fields = dict(seq_len=seq_len, batch_size=32, total_steps=steps,
                  warmup_steps=max(1, steps // 10), learning_rate=2e-3,
                  adam_bias_correction=True)
    fields.update(overrides)
    return PretrainConfig(model=ModelConfig(**model_fields), **fields)


def context_probe(task: str, cfg: PretrainConfig, *, steps: int | None = None,
                  eval_every: int = 50, seed: int = 0, num_eval: int = 256,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Train ``cfg``'s model for ``steps`` (default ``cfg.total_steps``, the schedule's
    length) on the synthetic ``task`` corpus with the real eager train step and return one
    row of held-out metrics per evaluation (step 0 included): the usual ``eval_step``
    metrics, ``uniform/*`` (uniform replacements, which are the unigram ones here) and the
    shuffled-context check. Fresh training sequences every step (no epochs)."""
    steps = cfg.total_steps if steps is None else steps
    num_tokens = cfg.model.vocab_size - synthetic.FIRST_ORDINARY_ID
    B, L = cfg.batch_size, cfg.seq_len

    def batch_of(ids_BxL: torch.Tensor) -> dict:
        return {"input_ids": ids_BxL, "attention_mask": torch.ones_like(ids_BxL)}

    held = batch_of(synthetic.corpus(task, num_eval, L, num_tokens, seed=2**40 + seed))
    proposals = {"uniform": pretrain.proposal_logits("uniform", cfg.model.vocab_size,
                                                     special_ids=cfg.special_ids)}
    eval_step = pretrain.make_eval_step(cfg, proposals=proposals)
    # Uniform replacements are the unigram ones here (every ordinary token equally frequent).
    train_step = pretrain.make_train_step(cfg, grad_route=pretrain.grad_route_for(False),
                                          mix_logits_V=proposals["uniform"])
    params = model.init_params(cfg.model, seed)
    opt_state = pretrain.init_opt_state(params, cfg)
    eval_key = rnglib.key(seed + 1_000_003)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def evaluate(step: int) -> None:
        m = eval_step(params, held, eval_key)
        m.update(shuffled_context_metrics(params, held, eval_key, cfg.model))
        row = {"step": step, "seconds": round(time.perf_counter() - t0, 2),
               **{k: float(v) for k, v in m.items()}}
        rows.append(row)
        if log:
            log(f"step {step:5d}  gen acc {row['gen_accuracy']:.3f}  disc AUC generator "
                f"{row['disc_auc']:.3f}  uniform {row['uniform/disc_auc']:.3f}  shuffle shift "
                f"{row['shuffle/logit_shift']:.3f}/{row['shuffle/logit_spread']:.3f}  state "
                f"spread {row['state/token_spread']:.3f}")

    evaluate(0)
    for step in range(steps):
        ids = synthetic.corpus(task, B, L, num_tokens, seed=seed * 1_000_003 + step)
        params, opt_state, _ = train_step(params, opt_state, batch_of(ids),
                                          pretrain.step_key(seed, step))
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1)
    return rows
