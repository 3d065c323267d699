"""Train and evaluate one configuration.

    python launch/train.py --config sweeps/ethos_270m.yaml [key=value ...]

Prints a metrics table and writes config.yaml, metrics.json, the confusion
matrix and ROC curve PNGs, misclassified.csv/.md, Orbax checkpoints
(`checkpoints/`), a W&B run (`wandb/`, offline unless an API key is set) and
the trained classifier into `<output_dir>/<name>/`.

    python launch/train.py --config ... name=myrun resume=true   # continue a killed run
    python launch/train.py --config ... name=myrun overwrite=true   # replace a finished run
    python launch/train.py --config ... data.source=grown.csv --continue runs/round1   # next labelling round

A run dir is written by one command at a time (a lock beside it, `.<name>.lock`), and
only once the config, data, labels, model and prompt have been checked; a run that
fails before its first checkpoint leaves the disk as it found it. Mistakes print one
line, `error: ...`, and exit with code 2.

On a multi-host job (TPU pod, several GPU hosts) run the same command on
every host; see BUILD.md.
"""

from __future__ import annotations

import argparse
import json

from toolkit import cli
from toolkit.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML run config (see sweeps/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 data.train_size=800; "
                                                 "resume=true continues a run, overwrite=true replaces one")
    p.add_argument("--continue", dest="warm_start", metavar="DIR",
                   help="start from the adapters of the classifier saved in DIR (a run, its classifier/ or a sweep): "
                        "the next labelling round on the grown file; the same as warm_start=DIR")
    p.add_argument("--no-save", action="store_true", help="do not save the trained classifier")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [*args.overrides, *([f"warm_start={args.warm_start}"] if args.warm_start else [])])

    from toolkit.compile_cache import enable_compilation_cache
    from toolkit.experiment import main_table, run_experiment

    enable_compilation_cache()  # a rerun of the same shapes reads its programs back
    result = run_experiment(cfg, progress=not args.quiet, save_model=not args.no_save)
    import jax

    if jax.process_index() != 0:
        return 0
    print(main_table(result))
    shown = [n for n in ("metrics.json", "confusion_matrix.png", "roc_curve.png", "pr_curve.png", "misclassified.csv")
             if (cfg.run_dir / n).is_file()]
    print(f"wrote {cfg.run_location}/ ({', '.join(shown)})")
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "confusion_matrix")}))
    return 0


entry = cli.script(main)  # the `agile-train` console script


if __name__ == "__main__":
    entry()
