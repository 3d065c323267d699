"""Build a model of any Gemma family: the class its config's family names, with random
weights or from exchange-format tensors.

Its own module because it knows every family's class (`gemma.Gemma`, `gemma4.Gemma4`),
and `gemma4` builds on `gemma`: kept in `gemma` it would close an import cycle.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.models import layout, quant
from toolkit.models.configs import ModelConfig, Runtime
from toolkit.models.gemma import FROZEN_FILTER, Gemma, quantized_weights
from toolkit.models.gemma4 import Gemma4
from toolkit.models.lora import LoRAConfig

Array = jax.Array


def build_model(config: ModelConfig, *, runtime: Runtime | None = None, lora: LoRAConfig | None = None,
                rngs: nnx.Rngs) -> Gemma:
    """The model class of `config.family`: `Gemma` (1, 2, 3) or `toolkit.models.gemma4.Gemma4`."""
    cls = Gemma4 if config.family == "gemma4" else Gemma
    return cls(config, runtime=runtime, lora=lora, rngs=rngs)


def from_params(
    config: ModelConfig,
    params: Mapping[str, np.ndarray],
    *,
    runtime: Runtime | None = None,
    lora: LoRAConfig | None = None,
    seed: int = 0,
    source: str = "params",
    shardings: Callable[[nnx.State], nnx.State] | None = None,
) -> Gemma:
    """Build a model (`build_model`: Gemma or Gemma4 by family) from a flat exchange-format weight
    dict without ever random-initialising the base.

    The base is created abstractly (no memory), then filled from `params`; only
    the LoRA adapters are initialised, under jit so the base init is dead code.
    `params` may also carry `...lora_a` / `...lora_b` entries, which then
    replace the fresh adapters. Shape or key mismatches raise naming `source`
    and the tensor.

    `shardings(abstract frozen state) -> state of shardings` (the caller's mesh
    rules; this module knows no mesh) places each frozen tensor shard by shard:
    every device receives only its slice, cut on the host
    (`jax.make_array_from_callback`, which on a pod asks each host only for its
    own devices' slices). A base bigger than one device then loads onto an FSDP
    mesh. Without it, tensors land on the default device.
    """
    from toolkit.weights.errors import WeightImportError

    runtime = runtime if runtime is not None else Runtime()

    def build() -> Gemma:
        return build_model(config, runtime=runtime, lora=lora, rngs=nnx.Rngs(seed))

    abstract = nnx.eval_shape(build)
    quantized = quantized_weights(abstract)  # float tensors given, stored quantized: {name: contracted axes}
    graphdef, base_state, other_state = nnx.split(abstract, FROZEN_FILTER, ...)
    # Adapters and RNG streams are small: initialise them for real, under jit so
    # that XLA drops the (unused) random init of the base.
    other_state = jax.jit(lambda: nnx.split(build(), FROZEN_FILTER, ...)[2])()
    lora_state = nnx.state(nnx.merge(graphdef, base_state, other_state), nnx.LoRAParam)
    stacks = layout.stacking(config, runtime.scan_layers)
    base_vars = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(base_state)}
    lora_vars = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(lora_state)}
    float_shapes = {k: v.shape for k, v in base_vars.items() if not _is_scale(k, quantized)}
    if quantized:  # the tensors given are float: take their shapes from the float model
        float_model = nnx.eval_shape(lambda: build_model(config, runtime=runtime.replace(base_quant="none"),
                                                         lora=lora, rngs=nnx.Rngs(seed)))
        for path, v in nnx.to_flat_state(nnx.state(float_model, FROZEN_FILTER)):
            if ".".join(map(str, path)) in quantized:
                float_shapes[".".join(map(str, path))] = v.shape
    expected = layout.exchange_shapes(float_shapes, stacks)
    lora_expected = layout.exchange_shapes({k: v.shape for k, v in lora_vars.items()}, stacks)
    missing = sorted(set(expected) - set(params))
    if missing:
        raise WeightImportError(f"{source}: missing tensors for {config.name}: {', '.join(missing[:8])}"
                                + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    unknown = sorted(set(params) - set(expected) - set(lora_expected))
    if unknown:
        raise WeightImportError(f"{source}: tensors not in a {config.name} model"
                                f"{' with this LoRA config' if any('lora' in u for u in unknown) else ''}: "
                                f"{', '.join(unknown[:8])}")
    for name, value in params.items():
        shape = expected[name] if name in expected else lora_expected[name]  # () is a shape too
        if tuple(value.shape) != tuple(shape):
            raise WeightImportError(f"{source}: tensor {name} has shape {tuple(value.shape)} but "
                                    f"{config.name} expects {tuple(shape)}")
    lora_given = {k: v for k, v in params.items() if k in lora_expected}
    if lora_given and set(lora_given) != set(lora_expected):
        raise WeightImportError(f"{source}: adapter tensors are incomplete: "
                                f"{', '.join(sorted(set(lora_expected) - set(lora_given))[:8])} missing")
    base_shardings = ({".".join(map(str, p)): v.get_value() if isinstance(v, nnx.Variable) else v
                       for p, v in nnx.to_flat_state(shardings(base_state))} if shardings is not None else {})
    values = layout.to_model(params, stacks)
    for name in [n for n in values if n in quantized]:  # one tensor at a time: its float copy is transient
        values[name], values[name + quant.SCALE_SUFFIX] = quant.quantize(
            np.asarray(values[name], np.float32), quantized[name], runtime.base_quant)
    for name, value in values.items():
        var = base_vars[name] if name in base_vars else lora_vars[name]
        if name in base_shardings:
            var.set_value(_sharded(value, var.dtype, base_shardings[name]))
        else:  # host copy made in the variable's dtype (a Deferred tensor is built in it)
            var.set_value(jnp.asarray(np.asarray(value, dtype=var.dtype)))
    return nnx.merge(graphdef, base_state, other_state)


def _is_scale(name: str, quantized: Mapping[str, Any]) -> bool:
    return name.endswith(quant.SCALE_SUFFIX) and name[: -len(quant.SCALE_SUFFIX)] in quantized


def _sharded(value: np.ndarray, dtype: Any, sharding: Any) -> Array:
    """A global array on `sharding`, each device's slice copied from the host alone."""
    host = np.asarray(value, dtype=jnp.dtype(dtype))  # one host copy, already in the stored dtype
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
