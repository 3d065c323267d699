"""The saved-classifier format: the one module that writes and reads it.

A saved classifier is a folder: `classifier.json` (what the classifier is: labels,
prompt, adapters, training and mesh settings, the model's architecture, its kind and
history), `lora.npz` (the adapters), `tokenizer.spm`, and `base.npz` when the base
model was given in memory rather than named. Every field of `classifier.json` is read
back through the same dataclasses and strict checks as a YAML config, so an unknown
or ill-typed key in an old or hand-edited file is an error naming it.

`classifier.json` holds the classifier's spec whole (`toolkit.spec.ClassifierSpec`):
the run config's own sections. Its `classifier.task` picks the class that rebuilds
it from the spec's registry (`toolkit.spec.CLASSES`, by import path), so this module
imports no classifier class and the classes import each other not at all. Files of
format 1 (the spec's fields flat at the top level) are still read.

Every read goes through `read_json` / `read_npz`: a truncated `lora.npz` or a damaged
`classifier.json` is an error naming the file and what to do, not a bare
`BadZipFile` or `JSONDecodeError`.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import spec as spec_module
from toolkit.spec import IN_MEMORY, ClassifierSpec

FORMAT = "agile-toolkit-classifier/2"  # classifier.json holds the spec whole (toolkit.spec)
FORMAT_V1 = "agile-toolkit-classifier/1"  # the spec's fields flat at the top level; still read
META = "classifier.json"
LORA = "lora.npz"
BASE = "base.npz"
TOKENIZER = "tokenizer.spm"
HEAD = "head.npz"  # train.trainable=head: the linear head's weights (classes, embed)
_KEYS = ("format", "spec", "model_config", "lora_merged", "history", "threshold")
_V1_KEYS = ("format", "kind", "labels", "model", "lora_merged", "model_config", "lora", "prompt", "verbalizers",
            "train", "max_length", "mesh", "remat", "param_dtype", "dtype", "history", "threshold", "base_quant",
            "categories", "question")

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

    `model` overrides the recorded `model.name` (`toolkit.spec.MODEL_HERE` for an export that holds a
    keras-hub preset with the adapters merged in); `lora=False` leaves the adapters out
    (they are merged into that preset)."""
    if lora:  # the trained state: the adapters, or every weight with train.trainable=full
        np.savez(directory / LORA, **files["lora"])
    if files.get("head") is not None:
        np.savez(directory / HEAD, weights=files["head"])
    if files["base"] is not None and model is None:
        np.savez(directory / BASE, **files["base"])
    (directory / TOKENIZER).write_bytes(clf.tokenizer.serialized_proto())
    spec = clf.spec
    if model is not None:
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, name=model))
    meta = {
        "format": FORMAT,
        "spec": spec.to_dict(),
        "model_config": clf.model_config.to_dict(),
        "lora_merged": not lora,
        "history": clf.history,
        "threshold": getattr(clf, "threshold_", None),
    }
    (directory / META).write_text(json.dumps(meta, indent=2, default=str))


def _spec(meta: dict[str, Any], meta_path: Path) -> ClassifierSpec:
    """The spec in `meta`, read as strictly as a config: the key at fault is named."""
    from toolkit.config import ConfigError

    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_V1):
        raise SavedFileError(f"{meta_path}: format {fmt!r} is not {FORMAT!r}; the folder was saved by another "
                             "program or a newer agile-toolkit")
    known = _KEYS if fmt == FORMAT else _V1_KEYS
    unknown = sorted(set(meta) - set(known))
    if unknown:
        raise SavedFileError(f"{meta_path}: unknown key {unknown[0]!r} (known: {', '.join(known)}); "
                             "remove it, or save the classifier again")
    required = ("spec",) if fmt == FORMAT else ("labels", "model", "lora", "prompt", "train", "max_length",
                                                 "param_dtype", "dtype")
    missing = [k for k in required if k not in meta]
    if missing:
        raise SavedFileError(f"{meta_path}: key {missing[0]!r} is missing; the file is damaged or from another "
                             "program: save the classifier again")
    try:
        if fmt == FORMAT:
            if not isinstance(meta["spec"], dict):
                raise SavedFileError(f"{meta_path}: spec: got {meta['spec']!r}; must be a mapping; {_FIX}")
            return ClassifierSpec.from_dict(meta["spec"], str(meta_path), "spec")
        return ClassifierSpec.from_dict(_v1_as_spec(meta, meta_path), str(meta_path))
    except (ConfigError, ValueError) as e:
        raise SavedFileError(str(e) if str(e).startswith(str(meta_path)) else f"{meta_path}: {e}") from None


def _v1_as_spec(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """A format-1 file's flat fields, arranged as the spec's sections."""
    kind = meta.get("kind", "single_label")
    if kind not in spec_module.CLASSES:
        raise SavedFileError(f"{meta_path}: kind {kind!r} is not one of {sorted(spec_module.CLASSES)}; the folder "
                             "was saved by another program or a newer agile-toolkit")
    task = {k: meta[k] for k in ("categories", "question") if k in meta}
    return {
        "classifier": {"labels": meta["labels"], "prompt": meta["prompt"], "verbalizers": meta.get("verbalizers"),
                       "max_length": meta["max_length"], "task": kind, **task},
        "model": {"name": IN_MEMORY if meta["model"] is None else meta["model"], "param_dtype": meta["param_dtype"],
                  "dtype": meta["dtype"], "remat": meta.get("remat", "none"),
                  "base_quant": meta.get("base_quant", "none")},
        "lora": meta["lora"], "train": meta["train"], "mesh": meta.get("mesh") or {},
    }


def read_adapters(directory: str | Path) -> tuple[ClassifierSpec, dict[str, np.ndarray], Path]:
    """(spec, trained adapters, the file they came from) of a saved classifier, its base
    model left unread: what a warm start (`AgileClassifier.start_from`) needs."""
    from toolkit.storage import local_copy

    root = local_copy(directory)
    meta_path = root / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a saved AgileClassifier: {META} is missing")
    meta = read_json(meta_path)
    spec = _spec(meta, meta_path)
    if meta.get("lora_merged"):
        raise SavedFileError(f"{root}: its adapters are merged into the exported base, so there are none to start "
                             "from; point at the saved classifier the export was made from (a run's classifier/)")
    if spec.train.trainable == "head":
        raise SavedFileError(f"{root}: a train.trainable=head classifier has no adapters to start from; "
                             "train from scratch")
    return spec, read_npz(root / LORA), root / LORA


def load(directory: str | Path, *, progress: bool = True, mesh: Any = None) -> Any:
    """Rebuild the classifier saved in `directory` (of whichever kind it is); `mesh`
    overrides the saved mesh (a model trained on a pod can score on one CPU)."""
    from toolkit.config import MeshConfig
    from toolkit.models.build import from_params
    from toolkit.models.configs import ModelConfig
    from toolkit.models.tokenizer import Tokenizer
    from toolkit.storage import local_copy

    root = local_copy(directory)  # a gs://... classifier is read from a fresh local copy
    meta_path = root / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a saved AgileClassifier: {META} is missing")
    meta = read_json(meta_path)
    spec = _spec(meta, meta_path)
    if mesh is not None:
        spec = dataclasses.replace(spec, mesh=mesh if isinstance(mesh, MeshConfig) else MeshConfig(**mesh))
    base = None
    if spec.model.name == spec_module.MODEL_HERE:  # an export: the base is the keras-hub preset / transformers files beside it
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, name=str(root)))
    elif spec.model.name == IN_MEMORY:
        if "model_config" not in meta:
            raise SavedFileError(f"{meta_path}: key 'model_config' is missing; the file is damaged or from another "
                                 "program: save the classifier again")
        weights = from_params(ModelConfig.from_dict(meta["model_config"]), read_npz(root / BASE),
                              runtime=spec.model.runtime(), source=str(root / BASE))
        base = (weights, Tokenizer.from_spm(root / TOKENIZER))
    try:
        clf = spec_module.classifier_class(spec.task).from_spec(spec, model=base, progress=progress)
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
