"""electra_fn.tree's fast path agrees with torch.utils._pytree on the trees the library builds."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

from electra_fn import model, optim
from electra_fn.config import ModelConfig
from electra_fn.tree import (memo_by_structure, tree_flatten, tree_leaves, tree_map,
                             tree_unflatten)

_leaf = st.one_of(st.integers(-5, 5), st.floats(-1, 1), st.booleans(), st.text(max_size=3),
                  st.builds(lambda n: torch.randn(n), st.integers(0, 3)))
_trees = st.recursive(
    st.one_of(_leaf, st.none()),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.lists(kids, max_size=4).map(tuple),
                           st.dictionaries(st.text(min_size=1, max_size=3), kids, max_size=4)),
    max_leaves=30)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b


@settings(max_examples=150, deadline=None)
@given(_trees)
def test_flatten_matches_torch_pytree(tree):
    leaves, spec = tree_flatten(tree)
    want, _ = pytree.tree_flatten(tree)
    assert len(leaves) == len(want) and all(a is b for a, b in zip(leaves, want))
    assert all(a is b for a, b in zip(tree_leaves(tree), want))
    assert _same(tree_unflatten(leaves, spec), tree)
    counter = iter(range(len(leaves)))  # tree_map visits leaves in flatten order
    assert _same(tree_map(lambda _x: next(counter), tree),
                 pytree.tree_unflatten(list(range(len(want))), pytree.tree_flatten(tree)[1]))


def test_tree_map_over_several_trees_and_structure_errors():
    a = {"x": [torch.ones(2), 3], "y": (None, 2.0)}
    b = {"x": [torch.full((2,), 2.0), 4], "y": (None, 5.0)}
    got = tree_map(lambda u, v: None if u is None else u * v, a, b)
    assert torch.equal(got["x"][0], torch.full((2,), 2.0)) and got["x"][1] == 12
    assert got["y"] == (None, 10.0)
    with pytest.raises(ValueError, match="structures differ"):
        tree_map(lambda u, v: u, a, {"x": [1, 2], "y": (None, 1.0, 2.0)})
    with pytest.raises(ValueError, match="leaves"):
        tree_unflatten([1], tree_flatten(a)[1])


def test_other_containers_go_to_torch_pytree():
    Point = collections.namedtuple("Point", "x y")
    for tree in ({"p": Point(torch.ones(1), 2)}, collections.OrderedDict(a=1, b=[2, 3])):
        leaves, spec = tree_flatten(tree)
        assert all(a is b for a, b in zip(leaves, pytree.tree_leaves(tree)))
        back = tree_unflatten(leaves, spec)
        assert type(back) is type(tree) and pytree.tree_structure(back) == \
            pytree.tree_structure(tree)


def test_memo_by_structure_computes_once_per_structure():
    calls = []

    def mask(tree):
        calls.append(1)
        return optim.default_decay_mask(tree)

    memo = memo_by_structure(mask)
    params = model.init_params(ModelConfig.from_name("tiny"), 0)
    first = memo(params)
    again = memo(tree_map(torch.zeros_like, params))  # same structure, other values
    assert again is first and len(calls) == 1
    assert tree_leaves(first) == tree_leaves(optim.default_decay_mask(params))
    smaller = {k: v for k, v in params.items() if k != "generator"}
    assert tree_leaves(memo(smaller)) == tree_leaves(optim.default_decay_mask(smaller))
    assert len(calls) == 2
