"""tf.data batches: deterministic, bucketed, padded to static shapes, per-host slices."""

import numpy as np
import pytest

from toolkit.data.pipeline import bucket_bounds, make_epoch, num_batches

RNG = np.random.default_rng(0)
IDS = [list(RNG.integers(1, 50, size=int(n))) for n in RNG.integers(3, 60, size=37)]
LABELS = RNG.integers(0, 3, size=37)


def _epoch(**kw):
    args = dict(batch_size=8, max_length=64, seed=3)
    args.update(kw)
    return list(make_epoch(IDS, LABELS, **args))


def test_every_row_appears_once_per_epoch_with_its_label_and_tokens():
    batches = _epoch()
    assert len(batches) == num_batches([len(x) for x in IDS], 8, 64)
    seen = []
    for b in batches:
        assert b.tokens.shape[0] == 8 and b.tokens.shape[1] in bucket_bounds(64)
        for row, i in enumerate(b.index):
            if i < 0:
                assert b.weights[row] == 0 and b.lengths[row] == 0
                continue
            seen.append(i)
            n = len(IDS[i])
            assert b.lengths[row] == n and b.labels[row] == LABELS[i] and b.weights[row] == 1
            assert list(b.tokens[row, :n]) == IDS[i] and not b.tokens[row, n:].any()
    assert sorted(seen) == list(range(len(IDS)))


@pytest.mark.slow
def test_same_seed_same_order_new_epoch_new_order():
    order = lambda bs: np.concatenate([b.index for b in bs])  # noqa: E731
    assert (order(_epoch()) == order(_epoch())).all()
    assert not (order(_epoch()) == order(_epoch(epoch=1))).all()


@pytest.mark.slow
def test_hosts_get_disjoint_slices_of_the_same_global_batches():
    full = _epoch()
    hosts = [_epoch(process_index=p, process_count=2) for p in range(2)]
    for g, h0, h1 in zip(full, *hosts):
        assert h0.tokens.shape == h1.tokens.shape == (4, g.tokens.shape[1])
        assert (np.concatenate([h0.index, h1.index]) == g.index).all()


@pytest.mark.slow
def test_resume_by_skipping_batches_replays_the_rest_exactly():
    full = _epoch(epoch=2)
    rest = _epoch(epoch=2, skip_batches=3)
    assert len(rest) == len(full) - 3
    assert all((a.tokens == b.tokens).all() for a, b in zip(rest, full[3:]))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="divide"):
        _epoch(process_count=3)
    with pytest.raises(ValueError, match="max_length"):
        _epoch(max_length=16)
    with pytest.raises(ValueError, match="no examples"):
        list(make_epoch([], [], batch_size=2, max_length=8))


def test_scoring_batches_are_sorted_tight_and_cover_every_row():
    from toolkit.data.pipeline import sorted_batches

    batches = list(sorted_batches(IDS, batch_size=8, max_length=64))
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen[seen >= 0]) == list(range(37)) and (seen < 0).sum() == 8 * len(batches) - 37
    for b in batches:
        real = b.index >= 0
        assert b.tokens.shape[1] % 8 == 0 and b.tokens.shape[1] - b.lengths[real].max() < 8
        for row in np.flatnonzero(real):
            assert list(b.tokens[row, : b.lengths[row]]) == IDS[b.index[row]]
