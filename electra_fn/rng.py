"""Counter-based, stateless random numbers from an explicit key.

A key is a 0-d int64 tensor. ``uniform(key, shape)`` hashes (key, element index) with a
32-bit integer mixer, so the same key gives the same numbers eagerly, under
``torch.compile``, under ``vmap`` and on any device; nothing reads or advances a global
generator. ``fold_in`` derives independent keys (per step, per layer, per use), in the spirit
of JAX's ``random.fold_in``.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash on int64 tensors holding uint32.

    Multipliers stay below 2**31 so no int64 product can overflow (eager, compiled and
    CUDA then agree bit for bit)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def key(seed: int | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A key from an integer seed."""
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=device)
    return _mix32((seed_t & _M32) ^ _GOLDEN)


def fold_in(k: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """A new key from ``k`` and an integer (a step, a layer index, a purpose tag)."""
    data_t = torch.as_tensor(data, dtype=torch.int64, device=k.device) if not isinstance(
        data, torch.Tensor) else data.to(torch.int64)
    return _mix32((_mix32(k) + (data_t & _M32) * 0x165667B1 + 0x632BE5AB) & _M32)


def bits(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform 32-bit integers (held in int64) of the given shape."""
    n = 1
    for s in shape:
        n *= s
    # numel < 2**31, so counter * _GOLDEN < 2**63.
    counter = torch.arange(n, device=k.device, dtype=torch.int64).reshape(shape)
    x = _mix32((counter * _GOLDEN + k) & _M32)
    return _mix32((x + k * 0x27D4EB2F + 1) & _M32)


def uniform(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 uniform numbers in (0, 1): 24 random bits, offset by half a step."""
    return ((bits(k, shape) >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 standard Gumbel noise, -log(-log(u))."""
    return -torch.log(-torch.log(uniform(k, shape)))
