"""Greedy decoding: the sanity check that a loaded model speaks the language."""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolkit.models.gemma import Gemma


@nnx.jit(static_argnums=())
def _next_token(model: Gemma, tokens: jax.Array, pos: jax.Array) -> jax.Array:
    # Causality makes padding past `pos` invisible, so one compiled shape (the
    # whole buffer) serves every step; only the row at `pos - 1` is projected.
    hidden = model.hidden_states(tokens)
    last = jax.lax.dynamic_index_in_dim(hidden, pos - 1, axis=1, keepdims=False)
    return jnp.argmax(model.project(last), axis=-1)


def greedy_tokens(
    model: Gemma, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()
) -> Iterator[int]:
    """Yield greedy continuation ids one at a time, stopping at any `stop_ids`."""
    n = len(prompt_ids)
    buf = np.zeros((1, n + max_new_tokens), np.int32)
    buf[0, :n] = prompt_ids
    tokens = jnp.asarray(buf)
    for pos in range(n, n + max_new_tokens):
        nxt = int(_next_token(model, tokens, jnp.int32(pos))[0])
        if nxt in stop_ids:
            return
        yield nxt
        tokens = tokens.at[0, pos].set(nxt)
