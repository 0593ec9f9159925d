"""Named run configurations for ``python -m experiments.pretrain_small --config NAME``.

Each module here is one documented run: its docstring opens with the command, the expected
wall time and the result it reached (with the record that holds it); ``FLAGS`` maps the
command line's flag names (underscored) to values; ``GLUE`` (optional) the fine-tuning
defaults of ``experiments.reproduce``; ``STUDY`` (optional) the variants and seeds of
``experiments.ablate``, whose baseline is ``FLAGS``. Flags given on the command line win.
"""

from __future__ import annotations

import importlib
import pkgutil

from electra_fn.runtime import UserError


def names() -> list[str]:
    """The named configurations, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> dict:
    """The flag values of configuration ``name``; a :class:`UserError` listing the known ones."""
    if name not in names():
        raise UserError(f"--config {name}: unknown (known: {', '.join(names())})")
    return dict(importlib.import_module(f"{__name__}.{name}").FLAGS)


def glue(name: str) -> dict:
    """The GLUE settings of configuration ``name`` for ``experiments.reproduce`` ({} if none)."""
    return part(name, "GLUE")


def part(name: str, attribute: str) -> dict:
    """Configuration ``name``'s ``attribute`` (``GLUE``, ``STUDY``) as a dict ({} if none)."""
    load(name)  # the same check and error
    return dict(getattr(importlib.import_module(f"{__name__}.{name}"), attribute, {}))


def apply(name: str, flags: dict, parser) -> dict:
    """``flags`` with configuration ``name``'s values wherever a flag was left at its default
    (flags given on the command line win)."""
    return {**flags, **{k: v for k, v in load(name).items()
                        if flags.get(k) == parser.get_default(k)}}

