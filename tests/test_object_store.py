"""Runs, resumes, exports and saved classifiers on an object store (issue 22, storage by URI).

No network: a local GCS emulator (`gcp-storage-emulator`, from PyPI) serves `gs://` to
etils.epath (its fsspec backend, gcsfs, through `STORAGE_EMULATOR_HOST`) and to Orbax
(tensorstore's GCS driver, through `TENSORSTORE_GCS_HTTP_URL`), the same two paths a
real bucket is reached by. The emulator keeps objects in memory: nothing is renamed,
and a folder exists only as the prefix of its objects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import keras_fixtures as kf
from conftest import HAM, ROOT, SPAM, free_port, subprocess_env

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("gcsfs") and importlib.util.find_spec("gcp_storage_emulator")),
    reason="the object-store tests need the dev extra (gcsfs, gcp-storage-emulator)")

BUCKET = "agile-runs"


def _serve_generations() -> None:
    """Make the emulator's media downloads carry `x-goog-generation`, as real GCS's do.

    tensorstore reads an object's generation from that header and sends it back as the
    `ifGenerationMatch` of the next write of the object (OCDBT's manifest). Without it,
    whenever tensorstore re-read the manifest instead of keeping the generation its own
    write returned (timing: twice in four loaded runs), the next commit failed with
    "Malformed StorageGeneration". The emulator still ignores the condition itself.
    """
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download = objects.download
    if getattr(download, "serves_generation", False):
        return

    def with_generation(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
        except NotFound:  # the download answers 404 itself
            pass
        return download(request, response, storage, *args, **kwargs)

    with_generation.serves_generation = True
    objects.download = with_generation  # `get(..., alt=media)` calls the module's download
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is download:
                handlers[method] = with_generation


@pytest.fixture(scope="module")
def gcs():
    """(environment for a subprocess, gcsfs filesystem on the emulator) for one in-memory bucket."""
    from gcp_storage_emulator.server import create_server

    _serve_generations()
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
           "EPATH_USE_TF": "false",  # tf.io.gfile's GCS client has no endpoint override: gcsfs does
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no gRPC bucket-layout probe (60 s per bucket offline)
           # One request at a time: the emulator's in-memory store is a plain dict behind a threaded server.
           "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from etils.epath import gpath

    gpath._is_tf_installed.cache_clear()  # read EPATH_USE_TF again
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)
    try:
        yield env, fs
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        gpath._is_tf_installed.cache_clear()


def _objects(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()  # gcsfs caches listings; other processes change the bucket
    return sorted(p[len(f"{BUCKET}/{prefix}/"):] for p in fs.find(f"{BUCKET}/{prefix}"))


def test_publish_uploads_markers_last_and_replaces_a_folder_without_renaming(gcs, tmp_path):
    from toolkit.storage import has_files, is_uri, publish, upload, writing_dir

    _, fs = gcs
    uri = f"gs://{BUCKET}/publish/clf"
    assert is_uri(uri) and not has_files(uri)
    local = tmp_path / "v1"
    (local / "sub").mkdir(parents=True)
    for name, text in {"classifier.json": "{}", "a.npz": "1", "sub/b.txt": "2"}.items():
        (local / name).write_text(text)
    assert upload(local, uri, last=["classifier.json"])[-1] == "classifier.json"
    assert _objects(fs, "publish/clf") == ["a.npz", "classifier.json", "sub/b.txt"]

    # A failure inside writing_dir writes nothing: the old folder, marker included, stays whole.
    with pytest.raises(RuntimeError):
        with writing_dir(uri, markers=["classifier.json"]) as tmp:
            (tmp / "classifier.json").write_text('{"new": 1}')
            raise RuntimeError("killed mid-save")
    assert fs.cat(f"{BUCKET}/publish/clf/classifier.json") == b"{}"

    # A new version replaces it: what it lacks is deleted, the marker is the new one.
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "classifier.json").write_text('{"v": 2}')
    (v2 / "a.npz").write_text("3")
    publish(v2, uri, markers=["classifier.json"])
    assert _objects(fs, "publish/clf") == ["a.npz", "classifier.json"]
    assert fs.cat(f"{BUCKET}/publish/clf/a.npz") == b"3" and has_files(uri)


def test_what_an_object_store_run_cannot_do_is_refused_in_one_line():
    from toolkit.config import ConfigError, RunConfig, from_dict

    with pytest.raises(ConfigError, match=r"overwrite.*object-store output_dir \(gs://b/runs\)") as e:
        from_dict(RunConfig, {"output_dir": "gs://b/runs", "overwrite": True})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"output_dir.*s3://b/runs.*Orbax writes checkpoints there only") as e:
        from_dict(RunConfig, {"output_dir": "s3://b/runs"})
    assert "\n" not in str(e.value)
    assert from_dict(RunConfig, {"output_dir": "s3://b/runs", "checkpoint": {"enabled": False}}).run_location \
        == "s3://b/runs/run"


@pytest.mark.slow
def test_a_run_resumes_exports_and_loads_on_a_gcs_bucket(gcs, tmp_path):
    env, fs = gcs
    preset = kf.make_preset("gemma3", tmp_path)
    texts = [(SPAM if i % 2 == 0 else HAM)[i % 3] + f" {i}" for i in range(32)]
    labels = ["spam" if i % 2 == 0 else "ham" for i in range(32)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "data.csv", index=False)
    cfg = {
        "name": "exp", "output_dir": f"gs://{BUCKET}/runs",
        "model": {"name": str(preset), "param_dtype": "float32"},
        "lora": {"rank": 2, "targets": ["q", "v"]},
        "data": {"source": str(tmp_path / "data.csv"), "test_fraction": 0.25, "validation_size": 6},
        "classifier": {"labels": ["spam", "ham"], "verbalizers": {"spam": "a", "ham": "in"}, "max_length": 64,
                       "prompt": {"instructions": "Classify"}},
        "train": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01},
        "checkpoint": {"keep": 1}, "tracking": {"mode": "disabled"},
        "callbacks": ["agile_test_callbacks:FailAfterEpoch"],
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run_env = {**subprocess_env(), **env}

    def cli(script: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                              timeout=600, env={**run_env, **extra})

    # A run that dies after its first epoch: its checkpoint and config are in the bucket, no metrics.
    r = cli("train.py", "--config", str(tmp_path / "cfg.yaml"), "--quiet", AGILE_TEST_FAIL_AFTER_EPOCH="1")
    assert r.returncode != 0 and "failing on purpose" in r.stderr, r.stderr[-3000:]
    died = _objects(fs, "runs/exp")
    steps = {p.split("/")[1] for p in died if p.startswith("checkpoints/") and p.split("/")[1].isdigit()}
    assert steps and "config.yaml" in died and "metrics.json" not in died, died  # Orbax wrote straight to the bucket
    assert not [p for p in died if "tmp" in p.split("/")[-1] or p.split("/")[-1].startswith(".")], died

    # The same name again without resume: refused in one line, the bucket untouched.
    again = cli("train.py", "--config", str(tmp_path / "cfg.yaml"), "--quiet")
    assert again.returncode != 0 and "already holds a run" in again.stderr and "resume=true" in again.stderr
    assert _objects(fs, "runs/exp") == died

    # resume=true continues from the bucket's checkpoint and finishes the second epoch.
    r = cli("train.py", "--config", str(tmp_path / "cfg.yaml"), "--quiet", "resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote gs://{BUCKET}/runs/exp/" in r.stdout
    done = _objects(fs, "runs/exp")
    for name in ("config.yaml", "metrics.json", "classifier/classifier.json", "classifier/lora.npz"):
        assert name in done, done
    metrics = json.loads(fs.cat(f"{BUCKET}/runs/exp/metrics.json"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    later = {p.split("/")[1] for p in done if p.startswith("checkpoints/") and p.split("/")[1].isdigit()}
    assert max(map(int, later)) > max(map(int, steps))

    # Export from the bucket to the bucket, then score both through AgileClassifier.load(gs://...).
    out = f"gs://{BUCKET}/exports/exp"
    r = cli("export.py", "--checkpoint", f"gs://{BUCKET}/runs/exp", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    exported = _objects(fs, "exports/exp")
    assert {"config.json", "classifier.json", "EXPORTED_FROM"} <= set(exported), exported
    score = ("import json, sys\nfrom toolkit.classifier import AgileClassifier\n"
             "texts = sys.argv[3:]\n"
             "a = AgileClassifier.load(sys.argv[1], progress=False).predict_proba(texts)\n"
             "b = AgileClassifier.load(sys.argv[2], progress=False).predict_proba(texts)\n"
             "print(json.dumps([a.tolist(), b.tolist()]))\n")
    r = subprocess.run([sys.executable, "-c", score, f"gs://{BUCKET}/runs/exp/classifier", out, *texts[:4]],
                       capture_output=True, text=True, timeout=600, env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    import numpy as np

    trained, merged = (np.asarray(x) for x in json.loads(r.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(merged, trained, atol=1e-4)
