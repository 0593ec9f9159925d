"""Synthetic corpora whose tokens can be told apart only by their context.

Every ordinary token is equally frequent in both corpora, so a replaced-token detector that
scores a token by its identity alone stays at ROC AUC 0.5 on uniform (= unigram) replacements;
anything above that is context. They are the ground truth of the learning test
(:mod:`electra_fn.diagnostics`):

* ``topic``: each sequence draws its tokens from one of ``num_topics`` disjoint groups. An
  off-topic token is visible from the bag of words (order does not matter).
* ``chain``: each token is followed by one of ``branching`` fixed successors (a bigram grammar
  built from random permutations, so every token stays equally frequent). A replaced token
  breaks the chain with its neighbours: detecting it needs word order.

Ids: the special tokens of :mod:`electra_fn.config` (0..4), then ``num_tokens`` ordinary ones.
"""

from __future__ import annotations

import torch

from electra_fn.config import CLS_ID, SEP_ID

FIRST_ORDINARY_ID = 5
TASKS = ("topic", "chain")


def vocab_size(num_tokens: int) -> int:
    """Vocabulary size of a synthetic corpus with ``num_tokens`` ordinary tokens."""
    return FIRST_ORDINARY_ID + num_tokens


def _frame(body_NxM: torch.Tensor) -> torch.Tensor:
    n = body_NxM.shape[0]
    cls = torch.full((n, 1), CLS_ID, dtype=torch.long)
    sep = torch.full((n, 1), SEP_ID, dtype=torch.long)
    return torch.cat([cls, body_NxM + FIRST_ORDINARY_ID, sep], dim=1)


def _check(num_seqs: int, seq_len: int, num_tokens: int) -> None:
    if num_seqs < 1 or seq_len < 4 or num_tokens < 2:
        raise ValueError(f"synthetic corpus: num_seqs={num_seqs} (>= 1), seq_len={seq_len} "
                         f"(>= 4), num_tokens={num_tokens} (>= 2) out of range")


def topic_corpus(num_seqs: int, seq_len: int, num_tokens: int, seed: int,
                 num_topics: int = 8) -> torch.Tensor:
    """[N, L] ids ``[CLS] t_1 .. t_{L-2} [SEP]``, the t_i uniform within one random topic
    (a block of ``num_tokens // num_topics`` consecutive ordinary tokens)."""
    _check(num_seqs, seq_len, num_tokens)
    if not 2 <= num_topics <= num_tokens // 2:
        raise ValueError(f"topic_corpus: num_topics={num_topics} must be in "
                         f"[2, num_tokens // 2 = {num_tokens // 2}]")
    gen = torch.Generator().manual_seed(int(seed))
    per_topic = num_tokens // num_topics
    topic_Nx1 = torch.randint(0, num_topics, (num_seqs, 1), generator=gen)
    body = topic_Nx1 * per_topic + torch.randint(0, per_topic, (num_seqs, seq_len - 2),
                                                  generator=gen)
    return _frame(body)


def chain_successors(num_tokens: int, branching: int, grammar_seed: int) -> torch.Tensor:
    """[branching, K] table: token k may be followed by ``table[b, k]`` for any b. Each row is
    a permutation, so the chain's stationary distribution is uniform."""
    gen = torch.Generator().manual_seed(int(grammar_seed))
    return torch.stack([torch.randperm(num_tokens, generator=gen) for _ in range(branching)])


def chain_corpus(num_seqs: int, seq_len: int, num_tokens: int, seed: int,
                 branching: int = 2, grammar_seed: int = 1234) -> torch.Tensor:
    """[N, L] ids ``[CLS] t_1 .. t_{L-2} [SEP]``: t_1 uniform, then each t_{i+1} one of t_i's
    ``branching`` successors (:func:`chain_successors` of ``grammar_seed``) at random.
    Corpora with the same ``grammar_seed`` share the grammar whatever their ``seed``."""
    _check(num_seqs, seq_len, num_tokens)
    if not 1 <= branching < num_tokens:
        raise ValueError(f"chain_corpus: branching={branching} must be in [1, num_tokens)")
    succ_BxK = chain_successors(num_tokens, branching, grammar_seed)
    gen = torch.Generator().manual_seed(int(seed))
    body = torch.empty(num_seqs, seq_len - 2, dtype=torch.long)
    body[:, 0] = torch.randint(0, num_tokens, (num_seqs,), generator=gen)
    choice = torch.randint(0, branching, (num_seqs, seq_len - 3), generator=gen)
    for i in range(1, seq_len - 2):
        body[:, i] = succ_BxK[choice[:, i - 1], body[:, i - 1]]
    return _frame(body)


def corpus(task: str, num_seqs: int, seq_len: int, num_tokens: int, seed: int) -> torch.Tensor:
    """``topic`` or ``chain`` corpus with their default structure (8 topics; 2 successors)."""
    if task == "topic":
        return topic_corpus(num_seqs, seq_len, num_tokens, seed)
    if task == "chain":
        return chain_corpus(num_seqs, seq_len, num_tokens, seed)
    raise ValueError(f"synthetic task {task!r}: expected one of {TASKS}")
