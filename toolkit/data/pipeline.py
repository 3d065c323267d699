"""tf.data input: shuffled, length-bucketed, padded batches, one host's share.

Batches are formed GLOBALLY and identically on every host (same seed, same
buckets), then each host keeps only its slice of rows. That is what lets a
multi-host trainer assemble one global array per step: every process sees a
batch of the same bucket shape at the same step, yet each feeds only its own
rows. Partial batches are padded with weight-0 rows, so each bucket compiles
to exactly one shape.

Each epoch is its own dataset (`seed + epoch`), so resuming at (epoch, batch)
is rebuilding that epoch and skipping `batch` batches — deterministic, with no
iterator state to save.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

def _tf():
    from toolkit.quiet import import_quietly

    tf = import_quietly("tensorflow")

    # tf.data only: keep TensorFlow off any accelerator JAX owns.
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (RuntimeError, ValueError):
        pass
    return tf


def _options(tf):
    """Deterministic order, and a pipeline that stays off the cores the train step uses.

    tf.data's default runtime (autotuned prefetch, a thread pool per core)
    competes with XLA's own threads: on a 2-core machine it made the 270M's
    epochs ~1.9x slower (41 s vs 21 s for ETHOS@200). A batch here is a slice of
    arrays already in memory, so one private thread keeps up with any step.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return options


@dataclasses.dataclass(frozen=True)
class Batch:
    """One host's rows: `tokens` (b, L) right-padded, `lengths` (b,), `labels` (b,),
    `weights` (b,) 1 for real rows and 0 for filler, `index` (b,) row ids (-1 for filler)."""

    tokens: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    index: np.ndarray


def bucket_bounds(max_length: int, smallest: int = 16) -> list[int]:
    """Powers of two up to `max_length` (which is always the last bound)."""
    bounds, b = [], smallest
    while b < max_length:
        bounds.append(b)
        b *= 2
    return bounds + [max_length]


def make_epoch(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    max_length: int,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    pad_id: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    skip_batches: int = 0,
    bounds: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Yield one epoch of this host's batches as numpy.

    `batch_size` is the GLOBAL batch; each host gets `batch_size // process_count` rows.
    """
    tf = _tf()
    if batch_size % process_count:
        raise ValueError(f"global batch_size={batch_size} must divide by process_count={process_count}")
    n = len(ids)
    if n == 0:
        raise ValueError("no examples to batch")
    lengths = np.array([len(x) for x in ids], np.int32)
    if lengths.max() > max_length:
        raise ValueError(f"an example has {lengths.max()} tokens > max_length={max_length}")
    bounds = list(bounds or bucket_bounds(max_length))
    flat = tf.constant(np.concatenate([np.asarray(x, np.int32) for x in ids]))
    starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    lens = tf.constant(lengths)
    labs = tf.constant(np.asarray(labels, np.int32))

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed + epoch, reshuffle_each_iteration=False)

    def row(i):
        return {"tokens": flat[starts[i]: starts[i] + tf.cast(lens[i], tf.int64)], "lengths": lens[i],
                "labels": labs[i], "weights": tf.constant(1.0), "index": tf.cast(i, tf.int32)}

    ds = ds.map(row)
    # tf.data's boundaries are exclusive upper bounds; padding to a bucket pads to bound - 1.
    ds = ds.bucket_by_sequence_length(
        lambda x: x["lengths"],
        bucket_boundaries=[b + 1 for b in bounds],
        bucket_batch_sizes=[batch_size] * (len(bounds) + 1),
        padded_shapes={"tokens": [None], "lengths": [], "labels": [], "weights": [], "index": []},
        padding_values={"tokens": pad_id, "lengths": 0, "labels": 0, "weights": 0.0, "index": -1},
        pad_to_bucket_boundary=True,
    )

    def fill(b):  # pad a partial batch to the full global batch with weight-0 rows
        short = batch_size - tf.shape(b["lengths"])[0]
        return {k: tf.pad(v, [[0, short]] + [[0, 0]] * (len(v.shape) - 1),
                          constant_values=(-1 if k == "index" else (pad_id if k == "tokens" else 0)))
                for k, v in b.items()}

    per_host = batch_size // process_count
    lo = process_index * per_host
    ds = ds.map(fill).skip(skip_batches).map(lambda b: {k: v[lo: lo + per_host] for k, v in b.items()})
    ds = ds.with_options(_options(tf)).prefetch(2)
    for b in ds.as_numpy_iterator():
        yield Batch(**b)


def num_batches(lengths: Sequence[int], batch_size: int, max_length: int,
                bounds: Sequence[int] | None = None) -> int:
    """Batches per epoch: the sum over buckets of ceil(rows / batch_size)."""
    bounds = list(bounds or bucket_bounds(max_length))
    counts = np.bincount(np.searchsorted(bounds, np.asarray(lengths), side="left"), minlength=len(bounds))
    return int(sum(-(-c // batch_size) for c in counts))


def sorted_batches(
    ids: Sequence[Sequence[int]], *, batch_size: int, max_length: int, multiple: int = 8, pad_id: int = 0
) -> Iterator[Batch]:
    """Scoring batches: rows sorted by length, each batch padded to a multiple of `multiple`.

    Scoring needs no shuffling, so sorting wastes far less compute on padding
    than power-of-two buckets (ETHOS: ~10% padding instead of ~35%), with at
    most `max_length / multiple` compiled shapes and filler rows only in the
    last batch.
    """
    lengths = np.array([len(x) for x in ids], np.int32)
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"an example has {lengths.max()} tokens > max_length={max_length}")
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        rows = order[lo: lo + batch_size]
        width = min(max_length, -(-int(lengths[rows].max()) // multiple) * multiple)
        tokens = np.full((batch_size, width), pad_id, np.int32)
        for r, i in enumerate(rows):
            tokens[r, : lengths[i]] = ids[i]
        n = len(rows)
        pad = batch_size - n
        yield Batch(tokens=tokens, lengths=np.concatenate([lengths[rows], np.zeros(pad, np.int32)]),
                    labels=np.zeros(batch_size, np.int32),
                    weights=np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
                    index=np.concatenate([rows.astype(np.int32), np.full(pad, -1, np.int32)]))


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """One host's packed rows (see `toolkit.data.packing`): `tokens`, `segment_ids`,
    `positions` (rows, width); `last`, `labels`, `weights`, `index` (rows, segments)."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    last: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    index: np.ndarray

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    def device_dict(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "index"}


def packed_steps(lengths: Sequence[int], shape, *, epoch: int = 0, seed: int = 0, shuffle: bool = True) -> int:
    """Steps in one packed epoch (what the learning-rate schedule needs up front)."""
    from toolkit.data import packing

    order = packing.epoch_order(len(lengths), epoch, seed, shuffle)
    return len(packing.plan(order, lengths, shape))


def make_packed_epoch(
    ids: Sequence[Sequence[int]],
    labels: Sequence[int] | np.ndarray | None,
    shape,
    *,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    pad_id: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    skip_batches: int = 0,
    order: np.ndarray | None = None,
) -> Iterator[PackedBatch]:
    """Yield one epoch of this host's packed batches, streamed through tf.data.

    The plan is global and identical on every host; each keeps rows
    `[process_index * rows/process_count, ...)` of every step.
    """
    from toolkit.data import packing

    if len(ids) == 0:
        raise ValueError("no examples to batch")
    if shape.padded_rows % process_count:
        raise ValueError(f"packed rows={shape.padded_rows} must divide by process_count={process_count}")
    lengths = [len(x) for x in ids]
    if order is None:
        order = packing.epoch_order(len(ids), epoch, seed, shuffle)
    steps = packing.plan(order, lengths, shape)
    data = packing.arrays(steps, ids, labels, shape, pad_id)
    per_host = shape.padded_rows // process_count
    lo = process_index * per_host
    tf = _tf()
    ds = tf.data.Dataset.from_tensor_slices(data).skip(skip_batches)
    ds = ds.map(lambda b: {k: v[lo: lo + per_host] for k, v in b.items()})
    for b in ds.with_options(_options(tf)).prefetch(2).as_numpy_iterator():
        yield PackedBatch(**b)
