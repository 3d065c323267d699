"""Fetch a keras-hub preset from Kaggle (or pass a local preset directory through).

`download_preset` accepts:

* a local directory (returned as is: no network),
* `kaggle://owner/model/framework/variation[/version]`,
* `owner/model/framework/variation[/version]` (a Kaggle model handle),
* a keras-hub preset name such as `gemma3_1b` or `gemma_2b_en`, resolved to
  its Kaggle handle through keras-hub's public preset registry
  (`GemmaBackbone.presets` / `Gemma3Backbone.presets`).

and downloads with `kagglehub.model_download` into kagglehub's cache (or
`cache_dir`). kagglehub's API calls have no timeout, so a network that drops
packets would hang it: reachability of the Kaggle API is probed first with a
short, thread-bounded timeout, and when it is unreachable only an already
cached copy is looked up (bounded too) before failing with a message saying
how to use a local preset directory instead.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from toolkit.weights.errors import WeightImportError

KAGGLE_SCHEME = "kaggle://"
DEFAULT_API_ENDPOINT = "https://api.kaggle.com"
# The keras-hub backbones whose presets we can load.
GEMMA_BACKBONE_CLASSES = ("GemmaBackbone", "Gemma3Backbone")


class PresetDownloadError(WeightImportError):
    """A preset could not be resolved or downloaded (bad handle, Kaggle unreachable or refusing)."""


def resolve_handle(handle_or_name: str) -> str:
    """The Kaggle model handle `owner/model/framework/variation[/version]` for a handle or preset name.

    No network: preset names are looked up in keras-hub's built-in registry.
    """
    s = str(handle_or_name).strip()
    if not s:
        raise PresetDownloadError("empty preset handle: give a keras-hub preset name, a Kaggle handle or a directory")
    if s.startswith(KAGGLE_SCHEME) or "/" in s:
        body = s[len(KAGGLE_SCHEME):] if s.startswith(KAGGLE_SCHEME) else s
        parts = body.split("/")
        if len(parts) not in (4, 5) or not all(parts) or s.startswith(("/", ".", "~")):
            raise PresetDownloadError(
                f"{s!r} is neither an existing preset directory nor a Kaggle model handle "
                "(kaggle://owner/model/framework/variation[/version], e.g. kaggle://keras/gemma3/keras/gemma3_1b/3)"
            )
        if len(parts) == 5 and not parts[4].isdigit():
            raise PresetDownloadError(f"Kaggle handle {s!r}: version {parts[4]!r} must be an integer")
        return body
    return _resolve_preset_name(s)


def gemma_preset_names() -> dict[str, str]:
    """keras-hub's built-in Gemma preset names -> their `kaggle://` handles."""
    from toolkit.quiet import import_quietly

    keras_hub = import_quietly("keras_hub")

    out: dict[str, str] = {}
    for cls_name in GEMMA_BACKBONE_CLASSES:
        cls = getattr(keras_hub.models, cls_name, None)
        if cls is None:
            continue
        for name, entry in cls.presets.items():
            handle = entry.get("kaggle_handle") if isinstance(entry, dict) else None
            if handle:
                out[name] = handle
    return out


def _resolve_preset_name(name: str) -> str:
    gemma = gemma_preset_names()
    if name in gemma:
        handle = gemma[name]
        if not handle.startswith(KAGGLE_SCHEME):
            raise PresetDownloadError(
                f"keras-hub preset {name!r} is hosted at {handle!r}, not on Kaggle; download it yourself and "
                "pass the local preset directory"
            )
        return handle[len(KAGGLE_SCHEME):]
    from toolkit.quiet import import_quietly

    keras_hub = import_quietly("keras_hub")

    if name in keras_hub.models.Backbone.presets:
        raise PresetDownloadError(
            f"keras-hub preset {name!r} is not a Gemma model; only {', '.join(GEMMA_BACKBONE_CLASSES)} presets "
            "are supported"
        )
    close = difflib.get_close_matches(name, sorted(gemma), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    examples = [n for n in ("gemma3_1b", "gemma3_270m", "gemma2_2b_en", "gemma_2b_en") if n in gemma]
    raise PresetDownloadError(
        f"{name!r} is not a local directory, a Kaggle handle or a keras-hub Gemma preset name{hint} "
        f"({len(gemma)} Gemma presets known, e.g. {', '.join(examples)}; list them with "
        "keras_hub.models.Gemma3Backbone.presets / GemmaBackbone.presets)"
    )


def download_preset(
    handle_or_name: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    connect_timeout: float = 5.0,
) -> Path:
    """Local directory of a keras-hub preset, downloading it from Kaggle if needed.

    A path to an existing directory is returned as is. Otherwise the argument
    is resolved to a Kaggle handle (see `resolve_handle`) and fetched with
    `kagglehub.model_download`; `cache_dir` overrides kagglehub's cache
    (`KAGGLEHUB_CACHE`, default ~/.cache/kagglehub) for this call.
    Raises `PresetDownloadError` when Kaggle is unreachable and no cached copy
    exists, or when Kaggle refuses the handle.
    """
    if isinstance(handle_or_name, os.PathLike):
        path = Path(handle_or_name)
        if path.is_dir():
            return path
        raise PresetDownloadError(f"local preset directory {path} does not exist")
    s = str(handle_or_name)
    local = Path(s).expanduser()
    if local.is_dir():
        return Path(s)
    if s.startswith(("/", ".", "~")):
        raise PresetDownloadError(f"local preset directory {s} does not exist")
    handle = resolve_handle(s)
    try:
        import kagglehub
    except ImportError as e:  # pragma: no cover - kagglehub is a dependency
        raise PresetDownloadError(
            f"downloading {handle!r} needs the `kagglehub` package ({e}); install it or pass a local preset directory"
        ) from e

    with _kagglehub_cache(cache_dir):
        endpoint = _api_endpoint()
        reachable, reason = _probe(endpoint, connect_timeout)
        if not reachable:
            # Offline: a versioned handle may already be in kagglehub's cache
            # (kagglehub answers those without the network). Bounded, since
            # an uncached one would try the network and could hang.
            if handle.count("/") == 4:
                cached = _bounded(lambda: kagglehub.model_download(handle), timeout=connect_timeout + 2)
                if isinstance(cached, str) and Path(cached).is_dir():
                    return Path(cached)
            raise PresetDownloadError(_offline_message(s, handle, endpoint, reason))
        try:
            return Path(kagglehub.model_download(handle))
        except Exception as e:  # noqa: BLE001 - classify and re-raise with the handle named
            raise _classify(e, s, handle, endpoint) from e


def _offline_message(original: str, handle: str, endpoint: str, reason: str) -> str:
    named = f"{original!r} (Kaggle handle {handle!r})" if original != handle else f"{handle!r}"
    return (
        f"cannot download keras preset {named}: Kaggle ({endpoint}) is unreachable ({reason}) and no cached copy "
        "was found. Either connect to the network, or download the preset on a machine with access (e.g. "
        f"`kagglehub.model_download('{handle}')`, which prints the directory) and pass that local preset "
        "directory (the one holding config.json and model.weights.h5) instead of the handle."
    )


def _classify(e: Exception, original: str, handle: str, endpoint: str) -> PresetDownloadError:
    try:
        import requests

        network_errors: tuple[type[BaseException], ...] = (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
        )
    except ImportError:  # pragma: no cover
        network_errors = ()
    if network_errors and isinstance(e, network_errors):
        return PresetDownloadError(_offline_message(original, handle, endpoint, f"{type(e).__name__}: {e}"))
    msg = str(e)
    if "401" in msg or "403" in msg:
        return PresetDownloadError(
            f"Kaggle refused {handle!r} ({msg.splitlines()[0] if msg else type(e).__name__}). Gemma models are "
            "gated: accept the license on the model's Kaggle page and set KAGGLE_USERNAME/KAGGLE_KEY (or "
            "~/.kaggle/kaggle.json), or pass a local preset directory instead."
        )
    if "404" in msg:
        return PresetDownloadError(
            f"Kaggle has no model {handle!r} ({msg.splitlines()[0]}); check the handle and version, or pass a "
            "local preset directory instead."
        )
    return PresetDownloadError(f"downloading {handle!r} from Kaggle failed: {type(e).__name__}: {e}")


def _api_endpoint() -> str:
    try:
        from kagglesdk.kaggle_env import get_endpoint, get_env

        return get_endpoint(get_env())
    except Exception:  # noqa: BLE001 - any kagglesdk layout change: use the public endpoint
        return DEFAULT_API_ENDPOINT


def _probe(endpoint: str, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to the API host (or the HTTPS proxy) opens within `timeout` seconds.

    Runs in a daemon thread so a hanging DNS lookup cannot block the caller.
    """
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "api.kaggle.com", url.port or (443 if url.scheme == "https" else 80)
    proxy = _proxy_for(url.scheme, host)
    if proxy:
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 8080

    def connect() -> str:
        with socket.create_connection((host, port), timeout=timeout):
            return "ok"

    result = _bounded(connect, timeout=timeout + 1.0)
    if result == "ok":
        return True, "ok"
    if isinstance(result, BaseException):
        return False, f"cannot connect to {host}:{port}: {type(result).__name__}: {result}"
    return False, f"no connection to {host}:{port} within {timeout:g} s"


def _proxy_for(scheme: str, host: str) -> str | None:
    import urllib.request

    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


_TIMED_OUT = object()


def _bounded(fn: Callable[[], Any], timeout: float) -> Any:
    """fn()'s result, the exception it raised, or `_TIMED_OUT` (fn keeps running in a daemon thread)."""
    box: list[Any] = [_TIMED_OUT]

    def run() -> None:
        try:
            box[0] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box[0] = e

    t = threading.Thread(target=run, name="kaggle-probe", daemon=True)
    t.start()
    t.join(timeout)
    return box[0]


@contextlib.contextmanager
def _kagglehub_cache(cache_dir: str | os.PathLike | None) -> Iterator[None]:
    """Point kagglehub's cache (read per call from KAGGLEHUB_CACHE) at `cache_dir` for the duration."""
    if cache_dir is None:
        yield
        return
    key = "KAGGLEHUB_CACHE"
    old = os.environ.get(key)
    os.environ[key] = str(Path(cache_dir).expanduser())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
