"""A quantized frozen base (QLoRA's idea): weights stored as int8 or packed int4 with
float scales, dequantized inside each matmul; the adapters stay fp32.

Why a small implementation rather than a library: the base is frozen, so only
weight-only storage and a dequantize before the einsum are needed, on every
backend and mesh the toolkit runs on (XLA fuses the dequantize into the matmul's
operand on GPU/TPU; on CPU it is one pass per layer slice inside the scan). qwix
(Tunix's library) brings quantized training and its own module rewriting, which a
frozen base does not need and which would not see our `Einsum`.

Scales: one per group of `GROUP` values along the first contracted axis, per output
channel (per channel outright when that axis does not divide into groups). Measured
on the 270M's zero-shot ETHOS scores, per-channel int8 moved p(yes) by 0.051 on
average, groups of 64 by 0.005; the scales cost 4 bytes per 64 values. int4 values
are packed two per byte along the last axis, so the stored array is half as wide:
the bytes at rest are what a 16 GB chip has to hold.

The exchange format (importers, export, saved classifiers) stays the float kernel:
quantizing happens when a weight is placed, dequantizing when it is exported.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MODES = ("none", "int8", "int4")
GROUP = 64
_QMAX = {"int8": 127.0, "int4": 7.0}
SCALE_SUFFIX = "_scale"


def plan(shape: Sequence[int], contracted: Sequence[int], mode: str) -> tuple[tuple[int, ...], int | None]:
    """(scale shape, grouped axis or None) of a weight of `shape` reduced over `contracted`."""
    scale = [1 if i in contracted else n for i, n in enumerate(shape)]
    if contracted:
        g = contracted[0]
        if shape[g] % GROUP == 0 and shape[g] > GROUP:
            scale[g] = shape[g] // GROUP
            return tuple(scale), g
    return tuple(scale), None


def stored_shape(shape: Sequence[int], mode: str) -> tuple[int, ...]:
    if mode == "int4":
        if shape[-1] % 2:
            raise ValueError(f"int4 packs two values per byte along the last axis; {tuple(shape)} is odd there")
        return (*shape[:-1], shape[-1] // 2)
    return tuple(shape)


def stored_dtype(mode: str) -> Any:
    return np.int8 if mode == "int8" else np.uint8


def _grouped(x: Any, axis: int | None, groups: int, xp: Any) -> Any:
    """`x` with `axis` split into (groups, size / groups), so a scale broadcasts per group."""
    if axis is None:
        return x
    shape = x.shape
    return xp.reshape(x, (*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1:]))


def _expand(scale: Any, axis: int | None, xp: Any) -> Any:
    return scale if axis is None else xp.expand_dims(scale, axis + 1)


def quantize(w: Any, contracted: Sequence[int], mode: str, xp: Any = np) -> tuple[Any, Any]:
    """(stored values, fp32 scales) of the float weight `w`; `xp` is numpy (host, when a
    checkpoint is placed) or jax.numpy (a random base initialised on device)."""
    w = xp.asarray(w, dtype=xp.float32)
    scale_shape, axis = plan(w.shape, contracted, mode)
    groups = scale_shape[axis] if axis is not None else 1
    wg = _grouped(w, axis, groups, xp)
    reduce = tuple(a + (1 if axis is not None and a > axis else 0) for a in contracted)
    if axis is not None:
        reduce = tuple(sorted({*reduce, axis + 1} - {axis}))
    absmax = xp.max(xp.abs(wg), axis=reduce, keepdims=True)
    scale_g = xp.where(absmax > 0, absmax / _QMAX[mode], xp.ones_like(absmax))
    q = xp.clip(xp.round(wg / scale_g), -_QMAX[mode], _QMAX[mode]).reshape(w.shape)
    scale = scale_g.reshape(scale_shape)
    if mode == "int8":
        return q.astype(xp.int8), scale.astype(xp.float32)
    nib = (q.astype(xp.int8) & 0xF).astype(xp.uint8)  # two's complement nibbles
    packed = nib[..., 0::2] | (nib[..., 1::2] << 4)
    return packed.astype(xp.uint8), scale.astype(xp.float32)


def dequantize(q: Any, scale: Any, contracted: Sequence[int], mode: str, dtype: Any) -> Any:
    """The float weight (in `dtype`) of stored values `q` and their scales (traced: jax.numpy)."""
    import jax.numpy as jnp

    if mode == "int4":
        q = q.astype(jnp.int8)
        lo = jnp.right_shift(jnp.left_shift(q, 4), 4)  # arithmetic shifts sign-extend the nibble
        hi = jnp.right_shift(q, 4)
        q = jnp.stack([lo, hi], axis=-1).reshape(*q.shape[:-1], q.shape[-1] * 2)
    shape = q.shape
    scale_shape, axis = plan(shape, contracted, mode)
    w = _grouped(q.astype(dtype), axis, scale_shape[axis] if axis is not None else 1, jnp)
    return (w * _expand(scale.astype(dtype), axis, jnp)).reshape(shape)


def scale_axes(axes: Sequence[str | None], shape: Sequence[int], contracted: Sequence[int],
               mode: str) -> tuple[str | None, ...]:
    """The scales' logical axes: a weight's own, but none where the scale has size 1."""
    scale_shape, _ = plan(shape, contracted, mode)
    return tuple(a if n > 1 else None for a, n in zip(axes, scale_shape))


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"base_quant {mode!r} is not one of {', '.join(MODES)}")
    return mode
