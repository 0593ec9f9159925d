"""Pytree helpers: the only module that touches ``torch.utils._pytree``."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

Tree = Any


# A fast path for the trees this library builds (dicts, lists, tuples, None, leaves): a step
# flattens and rebuilds the ~300-leaf parameter tree and its moments a dozen times, which
# through torch.utils._pytree cost ~1 ms each, a visible share of an eager step's host time on
# a GPU. Same leaf order (dict insertion order) and the same leaves (None is one) as
# torch.utils._pytree; any other container type (a namedtuple, an OrderedDict, a
# registered node) sends the whole call there.
_CONTAINERS = (dict, list, tuple)
_PLAIN_LEAVES = (bool, int, float, str, type(None))


class _Unsupported(Exception):
    pass


def _flatten(x: Any, leaves: list) -> Any:
    t = type(x)
    if t is torch.Tensor or t in _PLAIN_LEAVES:
        leaves.append(x)
        return _LEAF
    if t is dict:
        keys = tuple(x)
        return (dict, keys, tuple([_flatten(x[k], leaves) for k in keys]))
    if t is list or t is tuple:
        return (t, len(x), tuple([_flatten(v, leaves) for v in x]))
    if isinstance(x, _CONTAINERS) or pytree._get_node_type(x) in pytree.SUPPORTED_NODES:
        raise _Unsupported
    leaves.append(x)
    return _LEAF


class _Leaf:
    __slots__ = ()

    def __repr__(self) -> str:
        return "*"


_LEAF = _Leaf()


class _Spec:
    """A tree's structure (hashable) for :func:`tree_unflatten`."""

    __slots__ = ("node", "num_leaves")

    def __init__(self, node: Any, num_leaves: int):
        self.node, self.num_leaves = node, num_leaves

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Spec) and self.node == other.node

    def __hash__(self) -> int:
        return hash(self.node)

    def __repr__(self) -> str:
        return f"_Spec({self.node!r})"


def _unflatten(node: Any, it) -> Any:
    if node is _LEAF:
        return next(it)
    t, meta, children = node
    if t is dict:
        return dict(zip(meta, [_unflatten(c, it) for c in children]))
    items = [_unflatten(c, it) for c in children]
    return items if t is list else tuple(items)


def tree_flatten(tree: Tree) -> tuple[list, Any]:
    """(leaves, spec); ``tree_unflatten(leaves, spec)`` rebuilds the tree."""
    leaves: list = []
    try:
        node = _flatten(tree, leaves)
    except _Unsupported:
        return pytree.tree_flatten(tree)
    return leaves, _Spec(node, len(leaves))


def tree_unflatten(leaves: list, spec: Any) -> Tree:
    if not isinstance(spec, _Spec):
        return pytree.tree_unflatten(leaves, spec)
    leaves = list(leaves)
    if len(leaves) != spec.num_leaves:
        raise ValueError(f"tree_unflatten: {len(leaves)} leaves for a structure of "
                         f"{spec.num_leaves}")
    return _unflatten(spec.node, iter(leaves))


def tree_leaves(tree: Tree) -> list:
    return tree_flatten(tree)[0]


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf-wise over one or more trees of the same structure."""
    leaves, spec = tree_flatten(tree)
    if not isinstance(spec, _Spec):
        return pytree.tree_map(fn, tree, *rest)
    others = []
    for r in rest:
        r_leaves, r_spec = tree_flatten(r)
        if r_spec != spec:
            raise ValueError(f"tree_map: tree structures differ: {spec} vs {r_spec}")
        others.append(r_leaves)
    return _unflatten(spec.node, iter([fn(*xs) for xs in zip(leaves, *others)]))


def memo_by_structure(fn: Callable[[Tree], Tree]) -> Callable[[Tree], Tree]:
    """``fn(tree)``, a tree of Python constants that depends on the tree's structure (its
    paths) alone, such as a weight-decay mask, computed once per structure when eager.

    While ``torch.compile`` traces, ``fn`` is called every time: its constants fold away in the
    graph, whereas a read of the cache would become a guard on it (the second call would fail
    it and recompile). The cache belongs to the returned function (one per train step)."""
    cache: dict = {}

    def get(tree: Tree) -> Tree:
        if torch.compiler.is_compiling():
            return fn(tree)
        _, spec = tree_flatten(tree)
        if not isinstance(spec, _Spec):
            return fn(tree)
        if spec not in cache:
            cache[spec] = fn(tree)
        return cache[spec]

    return get


def _key_str(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """Dotted name of a pytree path, e.g. ``discriminator.layers.3.ffn.in.weight``."""
    return ".".join(_key_str(k) for k in path)


def tree_flatten_with_paths(tree: Tree) -> list[tuple[str, Any]]:
    """``[(dotted_path, leaf), ...]`` in flatten order."""
    leaves_with_path, _ = pytree.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in leaves_with_path]


def tree_map_with_path(fn: Callable[[str, Any], Any], tree: Tree) -> Tree:
    """Map ``fn(dotted_path, leaf)`` over a tree, keeping its structure."""
    leaves, spec = pytree.tree_flatten_with_path(tree)
    return pytree.tree_unflatten([fn(path_str(p), x) for p, x in leaves], spec)


def tree_count(tree: Tree) -> int:
    """Total number of scalar elements over all tensor leaves."""
    return sum(x.numel() for x in tree_leaves(tree) if isinstance(x, torch.Tensor))


def flat_dict(tree: Tree) -> dict[str, Any]:
    """``{dotted_path: leaf}`` (used by checkpoints and HF conversion)."""
    return dict(tree_flatten_with_paths(tree))


def unflat_dict(flat: dict[str, Any]) -> Tree:
    """Inverse of :func:`flat_dict` for dict-and-list trees (integer keys become list items)."""
    root: dict = {}
    for name, value in flat.items():
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists_from_int_keys(root)


def _lists_from_int_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _lists_from_int_keys(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        return [node[str(i)] for i in range(len(node))]
    return node
