"""Training and scoring loops: feed each process's rows, call the compiled steps.

One loop for every scale. The model arrives already placed on a mesh (one
CPU device, a GPU host or a pod); each process builds only its own rows of
every global batch, and `jax.make_array_from_process_local_data` joins them.
Per step the Python side moves the next numpy batch in; metrics stay on device
until a callback's read point. Everything else is inside the jitted step of
`step.py`, and everything around the steps (evaluation, tracking, checkpoints
and resume, reports) is a callback of `toolkit.train.callbacks`.

A resumed fit continues bit-exactly: the `Checkpointing` callback restores LoRA
params, optimizer state, RNG streams, the step and the data position, whose
epoch is rebuilt here with the same seed and fast-forwarded.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from toolkit.config import TrainConfig
from toolkit.data import packing as packing_lib
from toolkit.data.pipeline import make_epoch, make_packed_epoch, num_batches, packed_steps, sorted_batches
from toolkit.train import mesh as mesh_lib
from toolkit.train.callbacks import Callback, DivergenceGuard, FitState, Progress, StepMetrics
from toolkit.train.flops import mfu, train_flops_per_token
from toolkit.train.optim import make_optimizer, make_schedule, optimizer_of, program_key  # noqa: F401  (re-exported: loop.make_optimizer)
from toolkit.train.step import ModelParts, StepShardings, make_head, make_score_step, make_train_step

log = logging.getLogger(__name__)


class OutOfMemory(MemoryError):
    """A step did not fit in device memory; the message says which knobs to turn."""


_HYPER_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _config_hyperparams(opt_state: Any, cfg: TrainConfig) -> Any:
    """The restored optimizer state with the config's learning rate and weight decay:
    the config, not the checkpoint, says how to continue (e.g. a lower rate after
    a divergence)."""
    values = {"learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay}

    def fix(x: Any) -> Any:
        if isinstance(x, _HYPER_STATES):
            return x._replace(hyperparams={k: jax.device_put(np.asarray(values.get(k, v), np.asarray(v).dtype),
                                                             v.sharding) for k, v in x.hyperparams.items()})
        return x

    return jax.tree.map(fix, opt_state, is_leaf=lambda x: isinstance(x, _HYPER_STATES))


@dataclasses.dataclass
class Placement:
    """A model's parts placed on a mesh, with the shardings the compiled steps use."""

    parts: ModelParts
    mesh: Any
    shardings: StepShardings
    model_config: Any = None  # for FLOP / MFU estimates and the OOM message's memory bill
    runtime: Any = None  # how the model runs (`toolkit.models.configs.Runtime`): for that bill
    _score: dict[bool, Callable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def dp(self) -> int:
        return mesh_lib.data_parallel_size(self.mesh)

    def score_fn(self, with_hidden: bool = False) -> Callable:
        """The one compiled scorer of this model on this mesh (classes and head are its
        arguments): per-epoch eval and every later predict share it (`with_hidden`, for
        `suggest`, is a second one that also returns the hidden states), and so does the
        next classifier of the same architecture in this process (`_score_step`)."""
        if with_hidden not in self._score:
            self._score[with_hidden] = _score_step(self.parts.eval_graph, _hashable(self.shardings), with_hidden)
        return self._score[with_hidden]


# The compiled steps of the last few (architecture, mesh, optimizer shape) in this process.
# A jitted function traces, lowers and compiles once per input shape; a new one per fit
# would do all of it again for the next agile round, fold or classifier of the same model
# (~2 s for a tiny model, and the whole compile when JAX's persistent cache is off, as it is
# for library users). The key holds no weights: graph definitions, shardings and the
# optimizer's shape (its numbers are optimizer state: `toolkit.train.optim`). Bounded, so a
# process that walks through many models keeps only the last ones' executables.
STEP_CACHE_SIZE = 4


def _hashable(tree: Any) -> tuple[Any, tuple[Any, ...]]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(leaves)


def _unhashable(key: tuple[Any, tuple[Any, ...]]) -> Any:
    return jax.tree.unflatten(key[0], key[1])


@functools.lru_cache(maxsize=STEP_CACHE_SIZE)
def _score_step(graph: Any, shardings: Any, with_hidden: bool) -> Callable:
    return make_score_step(graph, shardings=_unhashable(shardings), with_hidden=with_hidden)


@functools.lru_cache(maxsize=STEP_CACHE_SIZE)
def _train_step(graph: Any, shardings: Any, loss: str, accum_steps: int, optimizer: tuple[Any, ...]) -> Callable:
    return make_train_step(graph, optimizer_of(optimizer), loss, accum_steps=accum_steps,
                           shardings=_unhashable(shardings))


def place_parts(parts: ModelParts, mesh: Any, model_config: Any = None, runtime: Any = None) -> Placement:
    """Shard frozen weights and adapters by the rule table; RNG streams replicated."""
    rep = mesh_lib.replicated(mesh)
    lora_s = mesh_lib.state_shardings(parts.lora, mesh)
    frozen_s = mesh_lib.state_shardings(parts.frozen, mesh)
    rest_s = jax.tree.map(lambda _: rep, parts.rest)
    placed = parts._replace(lora=mesh_lib.place(parts.lora, lora_s), frozen=mesh_lib.place(parts.frozen, frozen_s),
                            rest=mesh_lib.place(parts.rest, rest_s))
    shardings = StepShardings(lora=lora_s, opt_state=None, frozen=frozen_s, rest=rest_s,
                              batch=mesh_lib.batch_sharding(mesh), replicated=rep)
    return Placement(placed, mesh, shardings, model_config, runtime)


def memory_bill(model_config: Any, runtime: Any, cfg: TrainConfig, mesh: Any, length: int) -> str:
    """The planner's per-device bill of this run's step (`toolkit.plan`), for the OOM message;
    empty when it cannot be worked out."""
    if model_config is None or runtime is None:
        return ""
    try:
        from toolkit.plan import describe, plan

        sizes = tuple(dict(mesh.shape).get(a, 1) for a in mesh_lib.MESH_AXES)
        p = plan(model_config, mode="lora", base_quant=runtime.base_quant,
                 batch=cfg.batch_size // cfg.grad_accum_steps, length=length, mesh=sizes,
                 param_dtype=runtime.param_dtype, dtype=runtime.dtype, remat=runtime.remat,
                 compile=False, devices=list(mesh.devices.flat))
        return f" The planner's bill (launch/plan.py): {describe(p)}."
    except Exception:  # the message must not fail because the estimate did
        return ""


def _oom_guard(fn: Callable, cfg: TrainConfig, mesh: Any, model_config: Any = None, runtime: Any = None) -> Callable:
    def guarded(*args):
        try:
            return fn(*args)
        except jax.errors.JaxRuntimeError as e:
            text = str(e)
            if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
                length = int(args[4]["tokens"].shape[-1]) if len(args) > 4 and "tokens" in args[4] else 0
                raise OutOfMemory(
                    f"a train step ran out of device memory (global batch {cfg.batch_size}, "
                    f"grad_accum_steps {cfg.grad_accum_steps}, mesh {dict(mesh.shape)}). Lower train.batch_size "
                    "or raise train.grad_accum_steps; set model.remat=full (or dots); shard the frozen weights "
                    "with mesh.fsdp / mesh.tensor; store the base quantized (model.base_quant=int8|int4); or "
                    "shorten classifier.max_length." + memory_bill(model_config, runtime, cfg, mesh, length)
                    + " XLA said: " + text.splitlines()[0][:300]) from e
            raise
    return guarded


def _check_batch(cfg: TrainConfig, dp: int) -> None:
    micro = cfg.batch_size // cfg.grad_accum_steps
    if micro % dp:
        raise ValueError(f"train.batch_size={cfg.batch_size} / grad_accum_steps={cfg.grad_accum_steps} = {micro} rows "
                         f"per micro-batch must be a multiple of the data-parallel size {dp} (mesh data x fsdp); "
                         f"use a batch_size that is a multiple of {dp * cfg.grad_accum_steps}")


def _device_batch(b, placement: Placement, global_rows: int) -> dict[str, jax.Array]:
    if hasattr(b, "segment_ids"):
        local = b.device_dict()
    else:
        local = {"tokens": b.tokens, "lengths": np.maximum(b.lengths, 1), "labels": b.labels, "weights": b.weights}
    return mesh_lib.global_batch(placement.mesh, local, global_rows)


def _real_tokens(b) -> int:
    return b.real_tokens if hasattr(b, "segment_ids") else int(b.lengths.sum())


def new_state(placement: Placement, cfg: TrainConfig, steps_per_epoch: Sequence[int]) -> FitState:
    """A fresh fit's state (copies of the adapters and RNG streams, a new optimizer state,
    every step's learning rate): also the structure a checkpoint of this model restores into."""
    total = sum(steps_per_epoch)
    tx, schedule = make_optimizer(cfg, total)
    lora = jax.tree.map(jnp.copy, placement.parts.lora)  # the step donates its inputs
    opt_shardings = mesh_lib.like_shardings(jax.eval_shape(tx.init, lora), lora, placement.shardings.lora,
                                            placement.mesh)
    state = FitState(lora=lora, opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(lora),
                     rest=jax.tree.map(jnp.copy, placement.parts.rest), total_steps=total,
                     steps_per_epoch=list(steps_per_epoch),
                     # The learning rate of every step, computed once: no eager device op per step.
                     learning_rates=np.asarray(jax.device_get(jax.vmap(schedule)(jnp.arange(total + 1))), np.float64),
                     device_kind=jax.devices()[0].device_kind, num_devices=jax.device_count())
    return state


def fit(
    placement: Placement,
    ids: Sequence[Sequence[int]],
    labels: np.ndarray,
    class_ids: Sequence[int],
    cfg: TrainConfig,
    *,
    max_length: int,
    pad_id: int = 0,
    head: Sequence[int] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train the adapters; returns (final LoRA state, per-epoch history).

    With `head`, `ids` are each example's tokens after that shared prefix. Everything
    around the steps (evaluation, tracking, checkpoints and resume, reports) is a
    callback (`toolkit.train.callbacks`), run in the given order after the divergence
    guard and the progress bar."""
    parts, mesh = placement.parts, placement.mesh
    lengths = [len(x) for x in ids]
    if cfg.packing:
        # One fixed token budget per step: one compiled train step for the whole fit.
        shape = packing_lib.train_shape(lengths, cfg.batch_size, max_length,
                                        row_multiple=placement.dp * cfg.grad_accum_steps)
        epoch_steps = [packed_steps(lengths, shape, epoch=e, seed=cfg.seed) for e in range(cfg.epochs)]
        global_rows = shape.padded_rows
    else:
        _check_batch(cfg, placement.dp)
        epoch_steps = [num_batches(lengths, cfg.batch_size, max_length)] * cfg.epochs
        global_rows = cfg.batch_size
    state = new_state(placement, cfg, epoch_steps)
    shardings = placement.shardings._replace(opt_state=jax.tree.map(lambda x: x.sharding, state.opt_state))
    step_fn = _oom_guard(_train_step(parts.train_graph, _hashable(shardings), cfg.loss, cfg.grad_accum_steps,
                                     program_key(cfg)), cfg, mesh, placement.model_config, placement.runtime)
    class_arr, head_arg = jnp.asarray(class_ids, jnp.int32), make_head(head)
    slice_index, slice_count = mesh_lib.process_rows(mesh, global_rows)
    callbacks = [DivergenceGuard(), Progress(cfg.log_every_steps, progress and jax.process_index() == 0),
                 *callbacks]
    try:
        for cb in callbacks:
            cb.on_fit_start(state)
        # The config, not a restored checkpoint, says how to continue (a lower rate after a divergence).
        state.opt_state = _config_hyperparams(state.opt_state, cfg)
        start_epoch, skip = state.epoch, state.batch_in_epoch
        for epoch in range(start_epoch, cfg.epochs):
            state.epoch = epoch
            _run_epoch(state, step_fn, placement, ids, labels, class_arr, head_arg, cfg, callbacks,
                       shape=shape if cfg.packing else None, max_length=max_length, pad_id=pad_id,
                       global_rows=global_rows, slice_index=slice_index, slice_count=slice_count,
                       skip=skip if epoch == start_epoch else 0, head_length=len(head or ()))
            if state.stop is not None:  # a callback (early stopping) ended the fit
                break
        state.epoch = len(state.history)
    finally:
        for cb in callbacks:
            cb.close()
    return state.lora, state.history


def _run_epoch(state: FitState, step_fn: Callable, placement: Placement, ids: Sequence[Sequence[int]],
               labels: np.ndarray, class_arr: jax.Array, head_arg: Any, cfg: TrainConfig,
               callbacks: Sequence[Callback], *, shape: Any, max_length: int, pad_id: int, global_rows: int,
               slice_index: int, slice_count: int, skip: int, head_length: int) -> None:
    """One epoch's steps, its reads and its record (appended to `state.history`)."""
    epoch = state.epoch
    state.batch_in_epoch = skip
    if shape is not None:
        batches = make_packed_epoch(ids, labels, shape, epoch=epoch, seed=cfg.seed, pad_id=pad_id,
                                    process_index=slice_index, process_count=slice_count, skip_batches=skip)
    else:
        batches = make_epoch(ids, labels, batch_size=cfg.batch_size, max_length=max_length, epoch=epoch,
                             seed=cfg.seed, shuffle=True, pad_id=pad_id, process_index=slice_index,
                             process_count=slice_count, skip_batches=skip)
    t0, tokens0, flops0 = time.perf_counter(), state.tokens, state.flops
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    # Steps dispatched but not yet read: (step, this process's real tokens, device metrics).
    # Metrics stay on device until a callback's read point (or the epoch's end), so the
    # host never waits on step n before dispatching n+1 and builds the next batch while
    # the step runs. The divergence guard sees each step at the next read, before any
    # checkpoint could keep a diverged state.
    pending: list[tuple[int, int, dict[str, jax.Array]]] = []
    reads = 0

    def read() -> None:
        nonlocal reads
        if not pending:
            return
        reads += 1
        host = mesh_lib.to_host([m for *_, m in pending])
        steps = []
        for (at, local_tokens, _), hm in zip(pending, host):
            m = {k: float(v) for k, v in hm.items()}
            steps.append(StepMetrics(at, m))
            sums["loss"] += m["loss"] * m["count"]
            sums["correct"] += m["correct"]
            sums["count"] += m["count"]
            # Tokens of every process's rows (one global batch) and the FLOPs they cost.
            real = local_tokens * slice_count + head_length * int(m["count"])
            ctx = real / max(m["count"], 1)
            state.tokens += real
            state.flops += train_flops_per_token(placement.model_config, ctx) * real if placement.model_config else 0.0
        pending.clear()
        for cb in callbacks:
            cb.on_metrics(state, steps)

    steps_here = state.steps_per_epoch[epoch]
    for b in batches:
        for cb in callbacks:
            cb.on_batch(state, b)
        state.lora, state.opt_state, state.rest, m = step_fn(
            state.lora, state.opt_state, placement.parts.frozen, state.rest,
            _device_batch(b, placement, global_rows), class_arr, head_arg)
        state.step += 1
        state.batch_in_epoch += 1
        pending.append((state.step, _real_tokens(b), m))
        due = [cb for cb in callbacks if cb.every and (state.step % cb.every == 0 or state.step == state.total_steps)]
        if due or state.batch_in_epoch == steps_here:
            read()
        for cb in due:
            cb.on_step(state)
    read()
    dt = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "step": state.step, "train_loss": sums["loss"] / max(sums["count"], 1),
              "train_accuracy": sums["correct"] / max(sums["count"], 1), "epoch_seconds": dt,
              "tokens_per_s": (state.tokens - tokens0) / max(dt, 1e-9),
              "mfu": mfu((state.flops - flops0) / max(dt, 1e-9), state.device_kind, state.num_devices,
                         cfg.peak_tflops),
              "host_reads": reads}
    state.history.append(record)
    for cb in callbacks:
        cb.on_epoch_end(state, record)


def predict_proba(
    placement: Placement,
    lora: Any,
    ids: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int = 0,
    progress: bool = False,
    head: Sequence[int] | None = None,
    packing: bool = True,
    with_hidden: bool = False,
) -> Any:
    """(n, classes) probabilities in input order; `with_hidden`: (probabilities, (n, embed)
    last-token hidden states).

    Packed (the default): examples longest-first in rows of one shape that
    depends only on (batch_size, max_length, mesh), so every call shares one
    compiled scorer. Unpacked: length-sorted batches of `batch_size` rows.
    Either way a batch's rows are split over the data-parallel devices like a
    train batch; probabilities come back replicated, so every process returns
    the full array.
    """
    parts, mesh = placement.parts, placement.mesh
    out = np.zeros((len(ids), len(class_ids)), np.float32)
    hidden_out: np.ndarray | None = None  # sized by the first batch
    if not len(ids):
        return (out, np.zeros((0, 0), np.float32)) if with_hidden else out
    dp = placement.dp
    score = placement.score_fn(with_hidden)
    class_arr, head_arg = jnp.asarray(class_ids, jnp.int32), make_head(head)
    if packing:
        shape = packing_lib.score_shape(batch_size, max_length, row_multiple=dp)
        lengths = [len(x) for x in ids]
        order = packing_lib.score_order(lengths)
        rows = shape.padded_rows
        total = len(packing_lib.plan(order, lengths, shape))
        batches = make_packed_epoch(ids, None, shape, shuffle=False, pad_id=pad_id, order=order)
    else:
        rows = -(-batch_size // dp) * dp
        total = -(-len(ids) // rows)
        batches = sorted_batches(ids, batch_size=rows, max_length=max_length, pad_id=pad_id)
    slice_index, slice_count = mesh_lib.process_rows(mesh, rows)
    per = rows // slice_count
    lo = slice_index * per
    main = jax.process_index() == 0
    for b in tqdm(batches, total=total, unit="batch", disable=not (progress and main), desc="score"):
        if packing:
            local = {k: v[lo: lo + per] for k, v in b.device_dict().items()}
        else:
            local = {"tokens": b.tokens[lo: lo + per], "lengths": np.maximum(b.lengths, 1)[lo: lo + per],
                     "labels": b.labels[lo: lo + per], "weights": b.weights[lo: lo + per]}
        g = mesh_lib.global_batch(mesh, local, rows)
        result = mesh_lib.to_host(score(lora, parts.frozen, parts.rest, g, class_arr, head_arg))
        probs = np.asarray(result[0] if with_hidden else result)
        probs = probs.reshape(-1, probs.shape[-1])
        index = np.asarray(b.index).reshape(-1)
        real = index >= 0
        out[index[real]] = probs[real]
        if with_hidden:
            hidden = np.asarray(result[1])
            if hidden_out is None:
                hidden_out = np.zeros((len(ids), hidden.shape[-1]), np.float32)
            hidden_out[index[real]] = hidden.reshape(-1, hidden.shape[-1])[real]
    return (out, hidden_out) if with_hidden else out
