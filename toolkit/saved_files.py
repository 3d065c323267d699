"""The saved-classifier format: the one module that writes and reads it.

A saved classifier is a folder: `classifier.json` (what the classifier is: labels,
prompt, adapters, training and mesh settings, the model's architecture, its kind and
history), `lora.npz` (the adapters), `tokenizer.spm`, and `base.npz` when the base
model was given in memory rather than named. Every field of `classifier.json` is read
back through the same dataclasses and strict checks as a YAML config, so an unknown
or ill-typed key in an old or hand-edited file is an error naming it.

`KINDS` maps the saved `kind` to the class that rebuilds it, by import path, so this
module imports no classifier class and the classes import each other not at all.

Every read goes through `read_json` / `read_npz`: a truncated `lora.npz` or a damaged
`classifier.json` is an error naming the file and what to do, not a bare
`BadZipFile` or `JSONDecodeError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "agile-toolkit-classifier/1"
META = "classifier.json"
LORA = "lora.npz"
BASE = "base.npz"
TOKENIZER = "tokenizer.spm"
HEAD = "head.npz"  # train.trainable=head: the linear head's weights (classes, embed)
MODEL_HERE = "."  # classifier.json's "model" when the base weights are the directory itself
# kind -> "module:Class"; each class names its kind in `saved_kind` and its own fields in `_kind_meta`.
KINDS = {"single_label": "toolkit.classifier:AgileClassifier",
         "multilabel": "toolkit.multilabel:MultiLabelClassifier"}
_COMMON = ("format", "kind", "labels", "model", "lora_merged", "model_config", "lora", "prompt", "verbalizers",
           "train", "max_length", "mesh", "remat", "param_dtype", "dtype", "history", "threshold", "base_quant")

_FIX = "the file is damaged or cut short: save the classifier again, or copy it anew from where it was saved"


class SavedFileError(ValueError):
    """A saved classifier's file is missing, damaged or holds values out of range."""


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`."""
    if not path.is_file():
        raise SavedFileError(f"{path}: missing; {path.parent} is not a complete saved classifier")
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SavedFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {_FIX}") from None
    except UnicodeDecodeError as e:
        raise SavedFileError(f"{path}: not UTF-8 text (byte offset {e.start}); {_FIX}") from None
    if not isinstance(out, dict):
        raise SavedFileError(f"{path}: holds a JSON {type(out).__name__}, not an object; {_FIX}")
    return out


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the `.npz` archive `path`, read in full (so a cut-short member fails here)."""
    if not path.is_file():
        raise SavedFileError(f"{path}: missing; {path.parent} is not a complete saved classifier")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise SavedFileError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); {_FIX}") from None


def is_saved(directory: Any) -> bool:
    """Whether `directory` (a folder or an object-store URI) holds a complete saved classifier:
    `classifier.json` is written last, so its presence means the rest is there."""
    from toolkit.storage import location

    return (location(directory) / META).is_file()


def write(clf: Any, directory: Path, files: dict[str, Any], *, model: str | None = None, lora: bool = True) -> None:
    """Write `clf.host_files()` and the metadata into an existing (temporary) directory.

    `model` overrides the recorded base spec (`MODEL_HERE` for an export that holds a
    keras-hub preset with the adapters merged in); `lora=False` leaves the adapters out
    (they are merged into that preset)."""
    if lora:  # the trained state: the adapters, or every weight with train.trainable=full
        np.savez(directory / LORA, **files["lora"])
    if files.get("head") is not None:
        np.savez(directory / HEAD, weights=files["head"])
    if files["base"] is not None and model is None:
        np.savez(directory / BASE, **files["base"])
    (directory / TOKENIZER).write_bytes(clf.tokenizer.serialized_proto())
    spec = model if model is not None else (str(clf.model) if isinstance(clf.model, (str, os.PathLike)) else None)
    meta = {
        "format": FORMAT,
        "kind": clf.saved_kind,
        "labels": list(clf.class_names),
        "model": spec,
        "lora_merged": not lora,
        "model_config": clf.model_config.to_dict(),
        "lora": dataclasses.asdict(clf.lora_config),
        "prompt": dataclasses.asdict(clf.prompt_format),
        "verbalizers": clf.verbalizer_map,
        "train": dataclasses.asdict(clf.train_config),
        "max_length": clf.max_length,
        "mesh": dataclasses.asdict(clf.mesh_config),
        "remat": clf.remat,
        "base_quant": clf.base_quant,
        "param_dtype": clf.param_dtype,
        "dtype": clf.dtype,
        "history": clf.history,
        "threshold": getattr(clf, "threshold_", None),
        **clf._kind_meta(),
    }
    (directory / META).write_text(json.dumps(meta, indent=2, default=str))


def _kind_class(kind: str, meta_path: Path) -> type:
    if kind not in KINDS:
        raise SavedFileError(f"{meta_path}: kind {kind!r} is not one of {sorted(KINDS)}; the folder was saved by "
                             "another program or a newer agile-toolkit")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _arguments(meta: dict[str, Any], meta_path: Path, extra: tuple[str, ...]) -> dict[str, Any]:
    """The constructor arguments in `meta`, each section checked like a config's."""
    from toolkit.config import ConfigError, MeshConfig, TrainConfig, from_dict
    from toolkit.data.prompt import PromptFormat
    from toolkit.models.lora_config import LoRAConfig

    unknown = sorted(set(meta) - set(_COMMON) - set(extra))
    if unknown:
        raise SavedFileError(f"{meta_path}: unknown key {unknown[0]!r} (known: {', '.join(_COMMON + extra)}); "
                             "remove it, or save the classifier again")
    missing = [k for k in ("labels", "model", "lora", "prompt", "train", "max_length", "param_dtype", "dtype")
               if k not in meta]
    if missing:
        raise SavedFileError(f"{meta_path}: key {missing[0]!r} is missing; the file is damaged or from another "
                             "program: save the classifier again")
    try:
        return dict(lora=from_dict(LoRAConfig, meta["lora"], str(meta_path), "lora"),
                    prompt=from_dict(PromptFormat, meta["prompt"], str(meta_path), "prompt"),
                    train=from_dict(TrainConfig, meta["train"], str(meta_path), "train"),
                    mesh=from_dict(MeshConfig, meta.get("mesh") or {}, str(meta_path), "mesh"),
                    verbalizers=meta.get("verbalizers"), max_length=meta["max_length"],
                    param_dtype=meta["param_dtype"], dtype=meta["dtype"], remat=meta.get("remat", "none"),
                    base_quant=meta.get("base_quant", "none"),
                    **{k: meta[k] for k in extra})
    except ConfigError as e:
        raise SavedFileError(str(e)) from None


def load(directory: str | Path, *, progress: bool = True, mesh: Any = None) -> Any:
    """Rebuild the classifier saved in `directory` (of whichever kind it is); `mesh`
    overrides the saved mesh (a model trained on a pod can score on one CPU)."""
    from toolkit.models.configs import ModelConfig
    from toolkit.models.build import from_params
    from toolkit.models.tokenizer import Tokenizer

    from toolkit.storage import local_copy

    root = local_copy(directory)  # a gs://... classifier is read from a fresh local copy
    meta_path = root / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a saved AgileClassifier: {META} is missing")
    meta = read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise SavedFileError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    cls = _kind_class(meta.get("kind", "single_label"), meta_path)
    kwargs = _arguments(meta, meta_path, cls.saved_fields)
    if mesh is not None:
        kwargs["mesh"] = mesh
    if meta["model"] == MODEL_HERE:  # an export: the base is the keras-hub preset / transformers files beside it
        kwargs["model"] = str(root)
    elif meta["model"] is not None:
        kwargs["model"] = meta["model"]
    else:
        if "model_config" not in meta:
            raise SavedFileError(f"{meta_path}: key 'model_config' is missing; the file is damaged or from another "
                                 "program: save the classifier again")
        base = from_params(ModelConfig.from_dict(meta["model_config"]), read_npz(root / BASE), source=str(root / BASE))
        kwargs["model"] = (base, Tokenizer.from_spm(root / TOKENIZER))
    try:
        labels = meta["labels"]
        clf = cls(labels=tuple(labels) if isinstance(labels, list) else labels, progress=progress, **kwargs)
    except (TypeError, ValueError) as e:
        raise SavedFileError(f"{meta_path}: {e}") from None
    clf.history = meta.get("history", [])
    clf.classes_ = clf._fitted_classes()
    threshold = meta.get("threshold")
    if threshold is not None:
        problem = clf._threshold_problem(threshold)
        if problem:
            raise SavedFileError(f"{meta_path}: threshold {threshold!r} is not a threshold of this classifier "
                                 f"({problem}); remove it")
        clf.threshold_ = dict(threshold)
    clf._ensure_model()
    if not meta.get("lora_merged"):  # merged adapters are in the base: fresh ones (B = 0) change nothing
        clf._set_lora(read_npz(root / LORA), source=str(root / LORA))
    if (root / HEAD).is_file():
        head = read_npz(root / HEAD).get("weights")
        if head is None or head.shape != (len(clf.class_names), clf.model_config.embed_dim):
            raise SavedFileError(f"{root / HEAD}: expected 'weights' of shape ({len(clf.class_names)}, "
                                 f"{clf.model_config.embed_dim}); {_FIX}")
        clf._head_weights = head
    return clf
