"""The synthetic corpora of electra_fn.data.synthetic: rows stay in one topic or follow the
chain grammar, tokens are equally frequent, and bad arguments are rejected."""

from __future__ import annotations

import pytest
import torch

from electra_fn.config import CLS_ID, SEP_ID
from electra_fn.data import synthetic


def test_topic_corpus_rows_stay_in_one_topic_and_tokens_are_equally_frequent():
    ids = synthetic.topic_corpus(2000, 16, 64, seed=3, num_topics=8)
    assert ids.shape == (2000, 16)
    assert (ids[:, 0] == CLS_ID).all() and (ids[:, -1] == SEP_ID).all()
    topic = (ids[:, 1:-1] - synthetic.FIRST_ORDINARY_ID) // 8
    assert (topic == topic[:, :1]).all()
    counts = torch.bincount(ids[:, 1:-1].reshape(-1), minlength=69)[5:].float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_chain_corpus_follows_its_grammar_whatever_the_seed():
    succ = synthetic.chain_successors(16, 2, grammar_seed=7)
    valid = torch.zeros(16, 16, dtype=torch.bool)
    for row in succ:
        valid[torch.arange(16), row] = True
    for seed in (0, 1):
        body = synthetic.chain_corpus(500, 20, 16, seed=seed, grammar_seed=7)[:, 1:-1] - 5
        assert valid[body[:, :-1], body[:, 1:]].all()
    a = synthetic.chain_corpus(50, 20, 16, seed=0)
    assert torch.equal(a, synthetic.chain_corpus(50, 20, 16, seed=0))
    assert not torch.equal(a, synthetic.chain_corpus(50, 20, 16, seed=1))


@pytest.mark.parametrize("call", [
    lambda: synthetic.topic_corpus(4, 16, 64, 0, num_topics=1),
    lambda: synthetic.chain_corpus(4, 16, 8, 0, branching=8),
    lambda: synthetic.corpus("grammar", 4, 16, 8, 0),
    lambda: synthetic.topic_corpus(0, 16, 64, 0),
])
def test_synthetic_corpora_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
