"""The export formats, each written into a temporary directory swapped in at the end.

keras-preset: the adapters merged into the base, saved by keras-hub's own
`save_to_preset` (config.json, metadata.json, model.weights.h5, tokenizer and
preprocessor configs, the SentencePiece vocabulary), so
`keras_hub.models.Gemma3CausalLM.from_preset(out)` (or `GemmaCausalLM`) loads it.
Our classifier.json sits beside it with "model": "." so `AgileClassifier.load(out)`
reads the same weights and knows the labels and prompt.

hf: the adapters merged into the base, in transformers' layout (config.json in
the hub's dialect, model.safetensors, tokenizer.model), so
`transformers.AutoModelForCausalLM.from_pretrained(out)` loads it and
`AgileClassifier.load(out)` reads the same directory (see `toolkit.weights.hf`).

lora: the adapters alone, in three readers' forms: `adapters.lora.h5` for
keras-hub's `load_lora_weights` (after `enable_lora(rank, target_layer_names)` on
the same base), `orbax/` (an Orbax PyTree checkpoint of the adapter tree), and the
saved classifier (`AgileClassifier.load(out)`, base from its recorded spec).
`lora.json` says which base and how to load it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import saved_files
from toolkit.export.errors import ExportError
from toolkit.export.keras_files import KERAS_LAYER_NAMES, backbone_spec, causal_lm, write_lora_h5
from toolkit.io_utils import remove_stale_temps
from toolkit.spec import MODEL_HERE
from toolkit.storage import as_text, has_files, is_uri, location, mirror, writing_dir

FORMATS = ("keras-preset", "hf", "lora")
LORA_H5 = "adapters.lora.h5"
LORA_JSON = "lora.json"
ORBAX_DIR = "orbax"


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_target(out: Any, source: Any, overwrite: bool) -> None:
    """Refuse an output that would clobber work: a non-empty directory without
    `overwrite`, a file, or the checkpoint being exported (or a directory holding it).
    Either may be an object-store URI."""
    if is_uri(out) or is_uri(source):
        o, src = as_text(out).rstrip("/"), as_text(source).rstrip("/")
        if _inside(src, o):
            raise ExportError(f"--out {o} would replace the checkpoint being exported ({src}); choose another directory")
        if _inside(o, src):
            raise ExportError(f"--out {o} is inside the checkpoint being exported ({src}); choose a directory outside it")
        if has_files(out) and not overwrite:
            raise ExportError(f"--out {o} already exists and is not empty; pass --overwrite to replace it "
                              "(the old export stops counting as complete only once the new one is ready to upload)")
        return
    out, source = Path(out).absolute(), Path(source).absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory path")
    if out == source or out in source.parents:
        raise ExportError(f"--out {out} would replace the checkpoint being exported ({source}); "
                          "choose another directory")
    if source in out.parents:
        raise ExportError(f"--out {out} is inside the checkpoint being exported ({source}); "
                          "choose a directory outside it")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} already exists and is not empty; pass --overwrite to replace it "
                          "(the old contents stay until the new export is complete)")


def export(checkpoint: str | Path, out: str | Path, *, format: str = "keras-preset", overwrite: bool = False,
           dtype: str = "float32", progress: bool = True) -> Path:
    """Export the classifier behind `checkpoint` to `out`; returns `out`.

    `dtype` is the merged weights' dtype in the keras-preset and hf formats ("float32", or
    "bfloat16" for half the size).
    """
    if format not in FORMATS:
        raise ExportError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ExportError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    out, source = location(out), location(checkpoint)
    check_target(out, source, overwrite)
    from toolkit.run_lock import DirLock

    # An object store has no flock: the lock of a URI target is its local mirror's (one writer per host).
    with DirLock(mirror(out) if is_uri(out) else out, what="export target",
                 instead="Wait for that export to finish, or choose another --out"):
        check_target(out, source, overwrite)  # again, now that no other export can change it
        if not is_uri(out):
            for p in remove_stale_temps(out):  # a killed export's half-written temp dir
                print(f"note: removed {p}, left by an export that was killed", file=sys.stderr)
        return _export_locked(source, out, format=format, dtype=dtype, progress=progress)


# Published last to an object store, in this order: keras-hub and transformers open config.json,
# and AgileClassifier.load classifier.json; a half-uploaded export has neither.
EXPORT_MARKERS = ("config.json", saved_files.META)


def _export_locked(source: Any, out: Any, *, format: str, dtype: str, progress: bool) -> Any:
    from toolkit.export.source import load_classifier

    clf, origin = load_classifier(source, progress=progress)
    if clf._head_weights is not None:
        raise ExportError(f"{source}: a train.trainable=head classifier has a linear head, not adapters, so there "
                          "is nothing for keras-hub or transformers to merge; use it with AgileClassifier.load / "
                          "agile-predict, or train with train.trainable=lora to export")
    if format == "lora" and clf.train_config.trainable == "full":
        raise ExportError(f"{source}: a train.trainable=full classifier changed every weight and has no adapters; "
                          "export it with --format keras-preset or hf (the whole model)")
    if format == "keras-preset":
        backbone_spec(clf.model_config)  # an architecture keras-hub cannot hold fails before any writing
    files = clf.host_files()
    with writing_dir(out, markers=EXPORT_MARKERS) as tmp:
        if format == "keras-preset":
            write_keras_preset(clf, files, tmp, dtype=dtype)
        elif format == "hf":
            write_hf_checkpoint(clf, files, tmp, dtype=dtype)
        else:
            write_lora(clf, files, tmp)
        (tmp / "EXPORTED_FROM").write_text(f"{origin}\n")
    return out


def write_keras_preset(clf: Any, files: dict[str, Any], directory: Path, *, merge: bool = True,
                       dtype: str = "float32") -> None:
    """keras-hub's preset files plus classifier.json; `merge=False` writes the frozen
    base alone (the preset the `lora` format's adapters apply to)."""
    from toolkit.models.gemma import merged_params

    model = clf._model()
    params = merged_params(model) if merge else (files["base"] if files["base"] is not None else _frozen(model))
    lm = causal_lm(clf.model_config, params, clf.tokenizer.serialized_proto(),
                   sequence_length=clf.max_length, dtype=dtype)
    lm.save_to_preset(str(directory))
    del lm
    saved_files.write(clf, directory, files, model=MODEL_HERE, lora=not merge)


def write_hf_checkpoint(clf: Any, files: dict[str, Any], directory: Path, *, dtype: str = "float32") -> None:
    """transformers' files for the merged model, plus classifier.json reading them back."""
    from toolkit.models.gemma import merged_params
    from toolkit.weights.hf import write_hf

    write_hf(directory, clf.model_config, merged_params(clf._model()), clf.tokenizer.serialized_proto(),
             dtype=dtype)
    saved_files.write(clf, directory, files, model=MODEL_HERE, lora=False)  # merged above


def _frozen(model: Any) -> dict[str, np.ndarray]:
    """The base in fp32, dequantized when it was stored quantized."""
    from toolkit.models.gemma import frozen_params
    from toolkit.train.mesh import to_host

    return frozen_params(model, gather=to_host)


def write_lora(clf: Any, files: dict[str, Any], directory: Path) -> None:
    """The adapters for keras-hub (h5), for Orbax, and as a saved classifier."""
    import orbax.checkpoint as ocp

    lora_cfg = clf.lora_config
    write_lora_h5(directory / LORA_H5, files["lora"], clf.model_config, lora_cfg.rank, lora_cfg.targets,
                  lora_cfg.scale)
    tree: dict[str, Any] = {}
    for name, value in files["lora"].items():
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((directory / ORBAX_DIR).absolute(), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    saved_files.write(clf, directory, files)
    names = [KERAS_LAYER_NAMES[t] for t in lora_cfg.targets]
    base = clf.model_spec if isinstance(clf.model_spec, str) else "base.npz (in this directory)"
    (directory / LORA_JSON).write_text(json.dumps({
        "rank": lora_cfg.rank, "alpha": lora_cfg.alpha if lora_cfg.alpha is not None else lora_cfg.rank,
        "targets": list(lora_cfg.targets), "keras_target_layer_names": names,
        "scale_folded_into_keras_b": lora_cfg.scale, "base_model": base,
        "model_family": clf.model_config.family,
        "keras_hub": (f"backbone.enable_lora({lora_cfg.rank}, target_layer_names={names}); "
                      f"backbone.load_lora_weights('{LORA_H5}')"),
        "orbax": f"orbax.checkpoint.StandardCheckpointer().restore('{ORBAX_DIR}')",
        "toolkit": "toolkit.AgileClassifier.load(<this directory>)",
    }, indent=2))

