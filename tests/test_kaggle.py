"""The offline-testable half of `toolkit.weights.kaggle`: resolving names and
handles, passing local directories through, and failing fast (with a useful
message) when Kaggle cannot be reached. Nothing here downloads."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from toolkit.weights import kaggle
from toolkit.weights.errors import WeightImportError
from toolkit.weights.kaggle import PresetDownloadError, download_preset, resolve_handle

VERSIONED = re.compile(r"^keras/(?P<model>[\w.]+)/keras/(?P<variation>[\w.]+)/\d+$")


@pytest.mark.parametrize(
    "name, model",
    [("gemma3_1b", "gemma3"), ("gemma3_270m", "gemma3"), ("gemma_2b_en", "gemma"), ("gemma2_2b_en", "gemma2")],
)
def test_keras_hub_preset_names_resolve_to_versioned_kaggle_handles(name, model):
    m = VERSIONED.match(resolve_handle(name))
    assert m, resolve_handle(name)
    assert m["model"] == model and m["variation"] == name


@pytest.mark.parametrize(
    "given, handle",
    [
        ("kaggle://keras/gemma3/keras/gemma3_1b/3", "keras/gemma3/keras/gemma3_1b/3"),
        ("kaggle://keras/gemma3/keras/gemma3_1b", "keras/gemma3/keras/gemma3_1b"),
        ("keras/gemma/keras/gemma_2b_en/2", "keras/gemma/keras/gemma_2b_en/2"),
        ("someone/my-gemma/keras/tuned", "someone/my-gemma/keras/tuned"),
    ],
)
def test_kaggle_handles_pass_through(given, handle):
    assert resolve_handle(given) == handle


@pytest.mark.parametrize(
    "bad, match",
    [
        ("gemma3_1bb", r"not a local directory.*did you mean gemma3_1b"),
        ("bert_base_en", r"'bert_base_en' is not a Gemma model"),
        ("keras/gemma3/keras", r"neither an existing preset directory nor a Kaggle model handle"),
        ("kaggle://keras/gemma3/keras/gemma3_1b/latest", r"version 'latest' must be an integer"),
        ("kaggle://keras//keras/gemma3_1b", r"Kaggle model handle"),
        ("  ", r"empty preset handle"),
    ],
)
def test_bad_names_and_handles(bad, match):
    with pytest.raises(PresetDownloadError, match=match):
        resolve_handle(bad)


def test_errors_are_weight_import_errors():
    assert issubclass(PresetDownloadError, WeightImportError)
    assert issubclass(PresetDownloadError, ValueError)


def test_local_directory_is_returned_as_is(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a local directory must not touch the network")

    monkeypatch.setattr(kaggle, "_probe", no_network)
    assert download_preset(str(tmp_path)) == tmp_path
    assert download_preset(tmp_path) == tmp_path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma3_1b").mkdir()  # a local directory wins over the preset name
    assert download_preset("gemma3_1b") == Path("gemma3_1b")


def test_missing_local_path_is_not_mistaken_for_a_handle(tmp_path):
    with pytest.raises(PresetDownloadError, match="local preset directory .* does not exist"):
        download_preset(str(tmp_path / "missing"))
    with pytest.raises(PresetDownloadError, match="does not exist"):
        download_preset(tmp_path / "missing")


def test_offline_download_fails_fast_with_advice(tmp_path):
    """Called for real: in this sandbox Kaggle is unreachable."""
    if kaggle._probe(kaggle._api_endpoint(), 3.0)[0]:
        pytest.skip("Kaggle is reachable from here; this test is about the offline error")
    before = os.environ.get("KAGGLEHUB_CACHE")
    t0 = time.monotonic()
    with pytest.raises(PresetDownloadError) as e:
        download_preset("gemma3_1b", cache_dir=tmp_path / "cache")
    assert time.monotonic() - t0 < 20
    msg = str(e.value)
    assert "'gemma3_1b'" in msg and "keras/gemma3/keras/gemma3_1b/" in msg
    assert "unreachable" in msg and "local preset directory" in msg
    assert os.environ.get("KAGGLEHUB_CACHE") == before  # cache_dir override undone


def test_unversioned_handle_offline(monkeypatch):
    monkeypatch.setattr(kaggle, "_probe", lambda endpoint, timeout: (False, "test: no network"))
    with pytest.raises(PresetDownloadError, match=r"'keras/gemma/keras/gemma_2b_en'.*unreachable \(test: no network\)"):
        download_preset("kaggle://keras/gemma/keras/gemma_2b_en")


def test_offline_uses_an_already_cached_versioned_preset(tmp_path, monkeypatch):
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    handle = "keras/gemma3/keras/gemma3_1b/3"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    h = parse_model_handle(handle)
    cached = Path(Cache().get_path(h))
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    Cache().mark_as_complete(h)
    monkeypatch.delenv("KAGGLEHUB_CACHE")
    monkeypatch.setattr(kaggle, "_probe", lambda endpoint, timeout: (False, "test: no network"))
    assert download_preset(f"kaggle://{handle}", cache_dir=tmp_path) == cached


@pytest.mark.slow
def test_a_hanging_kagglehub_is_cut_off(monkeypatch):
    import kagglehub

    monkeypatch.setattr(kaggle, "_probe", lambda endpoint, timeout: (False, "test: no network"))
    monkeypatch.setattr(kagglehub, "model_download", lambda *a, **k: time.sleep(30))
    t0 = time.monotonic()
    with pytest.raises(PresetDownloadError, match="unreachable"):
        download_preset("keras/gemma3/keras/gemma3_1b/3", connect_timeout=0.2)
    assert time.monotonic() - t0 < 5


def test_probe_is_bounded_even_if_connect_hangs(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))
    t0 = time.monotonic()
    ok, reason = kaggle._probe("https://api.kaggle.com", 0.2)
    assert not ok and "within" in reason
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize(
    "error, match",
    [
        (RuntimeError("403 Client Error: Forbidden for url"), r"refused .*accept the license"),
        (RuntimeError("404 Client Error: Not Found"), r"has no model"),
        (RuntimeError("disk full"), r"failed: RuntimeError: disk full"),
    ],
)
def test_kaggle_refusals_name_the_handle(monkeypatch, error, match):
    import kagglehub

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(kaggle, "_probe", lambda endpoint, timeout: (True, "ok"))
    monkeypatch.setattr(kagglehub, "model_download", fail)
    with pytest.raises(PresetDownloadError, match=match) as e:
        download_preset("keras/gemma3/keras/gemma3_1b/3")
    assert "keras/gemma3/keras/gemma3_1b/3" in str(e.value)


def test_connection_error_mid_download_is_the_offline_error(monkeypatch):
    import kagglehub
    import requests

    def fail(*a, **k):
        raise requests.exceptions.ConnectionError("connection reset")

    monkeypatch.setattr(kaggle, "_probe", lambda endpoint, timeout: (True, "ok"))
    monkeypatch.setattr(kagglehub, "model_download", fail)
    with pytest.raises(PresetDownloadError, match=r"unreachable .*connection reset.*local preset directory"):
        download_preset("keras/gemma3/keras/gemma3_1b/3")
