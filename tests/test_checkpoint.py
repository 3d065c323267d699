"""The best checkpoint is ranked by its metric, kept across restarts, and what export takes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolkit.config import CheckpointSection, RunConfig, from_dict
from toolkit.train.checkpoint import Checkpointer

AUC = {10: 0.9, 20: 0.5, 30: 0.6}


def steps(ck: Checkpointer) -> list[int]:
    """The step directories on disk (what a restart or an export would find)."""
    return sorted(int(p.name) for p in ck.directory.iterdir() if p.name.isdigit())


def _state(step):
    return {"w": jnp.full((3,), float(step)), "rng": jax.random.key(step)}


@pytest.mark.slow
def test_best_step_is_ranked_by_the_metric_and_survives_reopen_and_later_saves(tmp_path):
    cfg = CheckpointSection(keep=1)
    ck = Checkpointer(tmp_path / "ck", cfg)
    for step, auc in AUC.items():
        ck.save(step, _state(step), {"step": step}, {"eval_roc_auc": auc, "eval_loss": 1 - auc})
    assert steps(ck) == [10, 30] and ck.best_step() == 10 and ck.latest_step() == 30
    ck.close()

    ck = Checkpointer(tmp_path / "ck", cfg)  # a new process reopening the run
    assert ck.best_step() == 10
    ck.save(40, _state(40), {"step": 40}, {"eval_roc_auc": 0.55})
    assert steps(ck) == [10, 40] and ck.best_step() == 10
    state, meta = ck.restore(_state(0), ck.best_step())
    np.testing.assert_array_equal(np.asarray(state["w"]), [10.0] * 3)
    ck.close()


def test_best_mode_min_ranks_the_lowest(tmp_path):
    ck = Checkpointer(tmp_path / "ck", CheckpointSection(keep=1, best_metric="eval_loss", best_mode="min"))
    for step, auc in AUC.items():
        ck.save(step, _state(step), {"step": step}, {"eval_loss": 1 - auc})
    assert ck.best_step() == 10 and steps(ck) == [10, 30]
    ck.close()


@pytest.mark.slow
def test_export_from_an_orbax_directory_takes_the_best_step(tmp_path):
    from toolkit.classifier import AgileClassifier
    from toolkit.export.source import from_orbax
    from toolkit.train.loop import make_optimizer

    cfg = from_dict(RunConfig, {"model": {"name": "random:tiny_gemma3"}, "classifier": {"labels": ["no", "yes"]},
                                "checkpoint": {"keep": 1}})
    clf = AgileClassifier.from_config(cfg, progress=False)
    clf._ensure_model()
    tx, _ = make_optimizer(cfg.train, 100)
    ck = Checkpointer(tmp_path / "ck", cfg.checkpoint)
    for step, auc in {**AUC, 40: 0.55}.items():
        lora = jax.tree.map(lambda x: jnp.full_like(x, step), clf._lora)
        ck.save(step, {"lora": lora, "opt_state": tx.init(lora), "rest": clf._parts.rest},
                {"step": step, "epoch": 0, "batch_in_epoch": 0, "history": [], "config": cfg.to_dict()},
                {"eval_roc_auc": auc})
    ck.close()
    exported, where = from_orbax(tmp_path / "ck", progress=False)
    assert where.endswith("/10")
    assert all(float(np.asarray(x).ravel()[0]) == 10.0 for x in jax.tree.leaves(exported._lora))
