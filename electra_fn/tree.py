"""Pytree helpers: the only module that touches ``torch.utils._pytree``."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

Tree = Any


def tree_map(fn: Callable, tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leaf-wise over one or more trees of the same structure."""
    return pytree.tree_map(fn, tree, *rest)


def tree_leaves(tree: Tree) -> list:
    return pytree.tree_leaves(tree)


def tree_flatten(tree: Tree) -> tuple[list, Any]:
    return pytree.tree_flatten(tree)


def tree_unflatten(leaves: list, spec: Any) -> Tree:
    return pytree.tree_unflatten(leaves, spec)


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
