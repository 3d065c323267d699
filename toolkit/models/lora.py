"""LoRA: low-rank adapters on Gemma's einsum projections.

The adapter layout mirrors keras-hub's `EinsumDense.enable_lora`: for a kernel
of shape `(*lead, out)`, A has shape `(*lead, rank)` and B `(rank, out)`, and
the effective kernel is `kernel + (alpha / rank) * A @ B`. Mirroring it means
an adapter trained here loads into keras-hub with `backbone.enable_lora(rank)`
+ `load_lora_weights`, and the codelab's recipe is reproduced exactly. For the
attention q/k/v kernels `(heads, embed, head_dim)` that makes A per-head.

The forward pass never materialises the merged kernel: `x @ A @ B` costs
O(rank) per token, and, more importantly, the backward pass then never builds
a gradient the size of the frozen kernel.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from toolkit.models import quant as quant_lib
from toolkit.models.lora_config import TARGETS, LoRAConfig  # noqa: F401  (re-exported)


def _lora_equations(equation: str) -> tuple[str, str]:
    """Split `x, kernel -> y` into `x, A -> h` and `h, B -> y` over a rank letter.

    The kernel's last letter (its output dim) is replaced by the rank letter `r`
    in A's and h's subscripts; B maps `r` back to that letter.
    """
    lhs, out = equation.split("->")
    x_sub, k_sub = lhs.split(",")
    rank = next(c for c in "rzyxwvu" if c not in equation)
    last = k_sub[-1]
    h_sub = out.replace(last, rank)
    return f"{x_sub},{k_sub[:-1]}{rank}->{h_sub}", f"{h_sub},{rank}{last}->{out}"


def _matmul_plan(equation: str, shape: Sequence[int]) -> tuple[tuple[int, ...], int, tuple[int, ...], int] | None:
    """How to run `x @ A` as one 2-D matmul: (A's transpose, contracted size, free dims' shape,
    number of contracted dims), or None when x's contracted dims are not its trailing ones
    in kernel order, or the output is not batch + free + last."""
    lhs, out = equation.split("->")
    x_sub, k_sub = lhs.split(",")
    lead = k_sub[:-1]
    contracted = "".join(c for c in lead if c in x_sub)
    free = "".join(c for c in lead if c not in x_sub)
    batch = x_sub[: len(x_sub) - len(contracted)]
    if not x_sub.endswith(contracted) or out != batch + free + k_sub[-1]:
        return None
    sizes = dict(zip(lead, shape))
    perm = (*(lead.index(c) for c in contracted + free), len(lead))
    return perm, math.prod(sizes[c] for c in contracted), tuple(sizes[c] for c in free), len(contracted)


class Einsum(nnx.Module):
    """A bias-free einsum projection with a frozen kernel and an optional adapter.

    `axes` are the kernel's logical axis names; the adapter's A inherits all but
    the last, B inherits the last, and the rank axis is never sharded. Spelling
    this out here is what keeps an adapter from being sharded by accident.
    `stack=n` holds n layers' weights on a leading `layers` axis (a scanned
    model); `__call__` then runs on one layer's slice inside the scan.
    """

    def __init__(
        self,
        equation: str,
        shape: Sequence[int],
        axes: Sequence[str | None],
        *,
        param_dtype: Any,
        dtype: Any,
        rngs: nnx.Rngs,
        lora: LoRAConfig | None = None,
        stack: int | None = None,
        quant: str = "none",
    ):
        self.equation = equation
        self.dtype = dtype
        self.stacked = stack is not None
        self.quant = quant
        shape = tuple(shape)
        self.shape = shape
        lead = () if stack is None else (stack,)
        lead_axes: tuple[str | None, ...] = () if stack is None else ("layers",)
        fan_in = 1
        x_sub, k_sub = equation.split("->")[0].split(",")
        for size, c in zip(shape, k_sub):
            if c in x_sub:
                fan_in *= size
        # The kernel's axes that the einsum sums over: a quantized kernel's scales span the rest.
        self.contracted = tuple(i for i, c in enumerate(k_sub) if c in x_sub)
        init = jax.nn.initializers.normal(stddev=fan_in**-0.5)
        if quant == "none":
            self.kernel = nnx.Param(
                init(rngs.params(), (*lead, *shape), param_dtype), sharding_names=(*lead_axes, *axes),
                eager_sharding=False,
            )
        else:  # a quantized frozen base: stored values + scales (toolkit.models.quant)
            full = self.contracted_axes(len(lead))
            q, scale = quant_lib.quantize(init(rngs.params(), (*lead, *shape), jnp.float32), full, quant, xp=jnp)
            self.kernel = nnx.Param(q, sharding_names=(*lead_axes, *axes), eager_sharding=False)
            self.kernel_scale = nnx.Param(scale, sharding_names=quant_lib.scale_axes(
                (*lead_axes, *axes), (*lead, *shape), full, quant), eager_sharding=False)
        self.lora = lora
        if lora is not None:
            off = len(lead)
            a_init = jax.nn.initializers.he_uniform(in_axis=tuple(range(off, off + len(shape) - 1)), out_axis=-1,
                                                    batch_axis=tuple(range(off)))
            self.lora_a = nnx.LoRAParam(
                a_init(rngs.params(), (*lead, *shape[:-1], lora.rank), jnp.float32),
                sharding_names=(*lead_axes, *axes[:-1], None),
                eager_sharding=False,
            )
            self.lora_b = nnx.LoRAParam(
                jnp.zeros((*lead, lora.rank, shape[-1]), jnp.float32),
                sharding_names=(*lead_axes, None, axes[-1]),
                eager_sharding=False,
            )
            self.lora_dropout = nnx.Dropout(lora.dropout, rngs=rngs)
            self._eq_a, self._eq_b = _lora_equations(equation)
            self._plan = _matmul_plan(equation, shape)

    def contracted_axes(self, lead: int) -> tuple[int, ...]:
        """The contracted axes of the kernel array with `lead` leading (layer) axes."""
        return tuple(lead + i for i in self.contracted)

    def float_kernel(self, dtype: Any) -> jax.Array:
        """The kernel in `dtype`: dequantized when the base is quantized. Works on the whole
        stack and on one layer's slice inside the scan alike."""
        k = self.kernel[...]
        if self.quant == "none":
            return k.astype(dtype)
        lead = k.ndim - len(self.shape)
        return quant_lib.dequantize(k, self.kernel_scale[...], self.contracted_axes(lead), self.quant, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum(self.equation, x, self.float_kernel(self.dtype))
        if self.lora is None:
            return y
        return y + (self.lora.scale * self._lora_delta(self.lora_dropout(x))).astype(y.dtype)

    def _lora_delta(self, x: jax.Array) -> jax.Array:
        """`x @ A @ B` as two plain 2-D matmuls.

        Written as einsums with a rank-8 contraction inside 4-D operands, XLA's
        CPU backend picks a slow loop emitter (measured: +15 ms per projection
        per layer on the 270M); reshaped to 2-D it uses its GEMM path.
        """
        a = self.lora_a[...].astype(self.dtype)
        b = self.lora_b[...].astype(self.dtype)
        if self._plan is None:  # a layout the reshapes below cannot express
            return jnp.einsum(self._eq_b, jnp.einsum(self._eq_a, x, a), b)
        perm, n_in, free_shape, n_contracted = self._plan
        a2 = a.transpose(perm).reshape(n_in, -1)
        h = x.reshape(-1, n_in) @ a2
        delta = h.reshape(-1, b.shape[0]) @ b
        return delta.reshape(*x.shape[: x.ndim - n_contracted], *free_shape, b.shape[1])

    def merged_kernel(self) -> jax.Array:
        """The kernel with the adapter folded in, in fp32 (for export)."""
        k = self.float_kernel(jnp.float32)
        if self.lora is None:
            return k
        eq = "l...r,lro->l...o" if self.stacked else "...r,ro->...o"
        return k + self.lora.scale * jnp.einsum(eq, self.lora_a[...], self.lora_b[...])
