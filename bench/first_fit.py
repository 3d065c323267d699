"""First fit: what a new user waits for, and where the time goes (issue 14).

    python bench/first_fit.py                      # 270M, ETHOS 200 rows x 3 epochs -> bench/results/first_fit.json
    python bench/first_fit.py --skip-aot           # only the fits
    python bench/first_fit.py --skip-cold          # one fit on your own compilation cache (whatever it holds)
    python bench/first_fit.py --aot-model gemma2_9b --skip-cold --out /tmp/aot.json
    python bench/first_fit.py --aot-only --aot-model gemma4_31b --out bench/results/aot_gemma4_31b.json

One run measures, and prints as one JSON object (also written atomically to `--out`):

* **cold**: a fresh Python process with an EMPTY JAX compilation cache (a new
  temp dir in `JAX_COMPILATION_CACHE_DIR`) does what the README tells a user:
  `toolkit.AgileClassifier(labels, model=..., prompt=...).fit(...)` on ETHOS's
  first `--rows` training rows for `--epochs` epochs (the default recipe of
  `bench/recipe_search.py`: its labels and question), then `predict_proba` on
  the 198 test rows. Fit, score and total seconds, the test ROC-AUC, and every
  XLA program compiled: its name, wall and CPU seconds, whether the persistent
  cache answered it, and the phase (setup / fit / score); plus the seconds of
  tracing (jaxpr) and lowering (MLIR). Counted with `jax.monitoring` listeners on
  JAX's own compile events (`/jax/core/compile/backend_compile_duration`, whose
  start is announced as a scalar event; `/jax/compilation_cache/cache_hits`).
* **warm**: the same in another fresh process, the cache now holding what the
  cold one compiled (programs that took >= `--cache-min-compile-seconds`).
* **steady-state FLOP rate** of the train step: real-token train FLOPs
  (`toolkit.train.flops.train_flops_per_token`, what the fit history's `mfu`
  counts) per second over the epochs after the first (the first one compiles),
  against this machine's fp32 matmul peak measured in the same run
  (`bench/matmul_peak.py`; passed to the fit as `train.peak_tflops`, so the
  history's `mfu` is relative to it).
* **AOT compile time** of a big model's train step (`--aot-model`, default
  gemma_7b), layer-scanned and unrolled (`Runtime.scan_layers`):
  `jax.jit(step).lower(*abstract args).compile()` on `jax.ShapeDtypeStruct`s,
  the model built with `nnx.eval_shape` (no weights exist), the real step of
  `toolkit.train.step.make_train_step`, a batch of `--aot-batch` x
  `--aot-length` tokens. The persistent cache is off for it.

Timings are wall-clock on whatever else the machine runs: `environment.load_avg`
says how busy it was; CPU seconds are given beside wall seconds where they help.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT = ROOT / "bench" / "results" / "first_fit.json"
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"


# ----------------------------------------------------------------------------- compile log
class CompileLog:
    """Every XLA compilation of this process, from JAX's monitoring events.

    JAX announces a backend compile's start as a scalar event and its end as a
    duration event (both `fun_name`-tagged); a persistent-cache hit is an event
    recorded in between. Install before the first jit.
    """

    def __init__(self) -> None:
        self.phase = "setup"
        self.programs: list[dict[str, Any]] = []
        self.trace_s: dict[str, float] = {}
        self.lower_s: dict[str, float] = {}
        self._hits = 0
        self._start: tuple[float, int] | None = None

    def install(self) -> "CompileLog":
        import jax.monitoring as mon

        mon.register_scalar_listener(self._scalar)
        mon.register_event_listener(self._event)
        mon.register_event_duration_secs_listener(self._duration)
        return self

    def _scalar(self, event: str, value: float, **kw: Any) -> None:
        if event == BACKEND_COMPILE:
            self._start = (time.process_time(), self._hits)

    def _event(self, event: str, **kw: Any) -> None:
        if event == CACHE_HIT:
            self._hits += 1

    def _duration(self, event: str, secs: float, **kw: Any) -> None:
        if event == BACKEND_COMPILE:
            cpu0, hits0 = self._start or (time.process_time(), self._hits)
            self._start = None
            self.programs.append({"name": str(kw.get("fun_name", "?")), "seconds": round(secs, 4),
                                  "cpu_s": round(time.process_time() - cpu0, 3),
                                  "cache_hit": self._hits > hits0, "phase": self.phase})
        elif event == TRACE:
            self.trace_s[self.phase] = self.trace_s.get(self.phase, 0.0) + secs
        elif event == LOWER:
            self.lower_s[self.phase] = self.lower_s.get(self.phase, 0.0) + secs

    def summary(self) -> dict[str, Any]:
        """Counts and seconds; `compile_s` is real compiling (cache misses), `cache_load_s` reading hits."""
        progs = self.programs
        miss = [p for p in progs if not p["cache_hit"]]
        phases = sorted({p["phase"] for p in progs} | set(self.trace_s))
        by_phase = {ph: {"programs": sum(p["phase"] == ph for p in progs),
                         "compiled": sum(p["phase"] == ph for p in miss),
                         "compile_s": round(sum(p["seconds"] for p in miss if p["phase"] == ph), 3),
                         "cache_load_s": round(sum(p["seconds"] for p in progs
                                                   if p["phase"] == ph and p["cache_hit"]), 3),
                         "trace_s": round(self.trace_s.get(ph, 0.0), 3),
                         "lower_s": round(self.lower_s.get(ph, 0.0), 3)} for ph in phases}
        return {"programs": len(progs), "compiled": len(miss), "cache_hits": len(progs) - len(miss),
                "compile_s": round(sum(p["seconds"] for p in miss), 3),
                "compile_cpu_s": round(sum(p["cpu_s"] for p in miss), 3),
                "cache_load_s": round(sum(p["seconds"] for p in progs if p["cache_hit"]), 3),
                "trace_s": round(sum(self.trace_s.values()), 3), "lower_s": round(sum(self.lower_s.values()), 3),
                "by_phase": by_phase,
                "each": sorted(progs, key=lambda p: -p["seconds"])}


# ----------------------------------------------------------------------------- one fit (child process)
def child_fit(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    import jax

    log = CompileLog().install()
    from toolkit.compile_cache import enable_compilation_cache

    cache_dir = enable_compilation_cache(min_compile_seconds=args.cache_min_compile_seconds)
    import toolkit
    from bench.recipe_search import DATASETS, classifier_kwargs
    from toolkit.metrics import classification_metrics

    train, test, task = DATASETS["ethos"](args.data_dir)
    train = train.iloc[:args.rows]
    labels, kwargs = classifier_kwargs("default", task, len(train))
    kwargs["train"] = {**kwargs.get("train", {}), "epochs": args.epochs, "peak_tflops": args.peak_tflops}
    t_ready = time.perf_counter()

    log.phase = "fit"
    cpu0, t0 = time.process_time(), time.perf_counter()
    clf = toolkit.AgileClassifier(labels, model=args.model, progress=False, **kwargs)
    clf.fit(train["text"].tolist(), train["label"].to_numpy())
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    log.phase = "score"
    cpu0, t0 = time.process_time(), time.perf_counter()
    probs = clf.predict_proba(test["text"].tolist())
    score_s, score_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    m = classification_metrics(test["label"].to_numpy(), probs, labels)
    history = [{k: r[k] for k in ("epoch", "epoch_seconds", "tokens_per_s", "mfu", "train_loss") if k in r}
               for r in clf.history]
    out = {"fit_s": round(fit_s, 3), "score_s": round(score_s, 3), "total_s": round(fit_s + score_s, 3),
           "fit_cpu_s": round(fit_cpu, 3), "score_cpu_s": round(score_cpu, 3),
           "fit_outside_epochs_s": round(fit_s - sum(r["epoch_seconds"] for r in history), 3),
           "startup_s": round(t_ready - t_start, 3),
           "test_roc_auc": m["roc_auc"], "test_f1": m["f1"], "train_rows": len(train), "test_rows": len(test),
           "epochs": args.epochs, "history": history, "compiles": log.summary(), "cache_dir": cache_dir,
           "jax_backend": jax.default_backend()}
    Path(args.child_out).write_text(json.dumps(out, default=float))


def run_fit_process(args: argparse.Namespace, cache_dir: str | None, peak_tflops: float) -> dict[str, Any]:
    """One fit in a fresh interpreter; `cache_dir` None = the user's own cache (enable_compilation_cache)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(args.cache_min_compile_seconds)
    elif os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="first-fit-") as tmp:
        child_out = Path(tmp) / "fit.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-fit", "--child-out", str(child_out),
               "--model", args.model, "--rows", str(args.rows), "--epochs", str(args.epochs),
               "--peak-tflops", repr(peak_tflops), "--cache-min-compile-seconds", str(args.cache_min_compile_seconds)]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not child_out.exists():
            raise SystemExit(f"the fit process failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
        out = json.loads(child_out.read_text())
    out["process_s"] = round(wall, 3)  # interpreter start, imports, data, fit, score
    return out


def steady_rate(fit: dict[str, Any], peak_gflops: float) -> dict[str, Any]:
    """Real-token train FLOP/s over the epochs after the first (which compiles)."""
    steady = [r for r in fit["history"][1:] if r.get("mfu") is not None]
    if not steady:
        return {"gflops": None, "reason": "needs >= 2 epochs (the first one compiles)"}
    secs = sum(r["epoch_seconds"] for r in steady)
    flops = sum(r["mfu"] * peak_gflops * 1e9 * r["epoch_seconds"] for r in steady)
    tokens = sum(r["tokens_per_s"] * r["epoch_seconds"] for r in steady)
    return {"gflops": round(flops / secs / 1e9, 3), "tokens_per_s": round(tokens / secs, 1),
            "fraction_of_matmul_peak": round(flops / secs / (peak_gflops * 1e9), 4),
            "epochs": [r["epoch"] for r in steady], "seconds": round(secs, 3),
            "first_epoch_s": fit["history"][0]["epoch_seconds"]}


# ----------------------------------------------------------------------------- AOT compile
def aot_compile(model: str, scan_layers: bool, batch: int, length: int) -> dict[str, Any]:
    """Lower and compile the real train step of `model` on abstract inputs; no weights are made."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from toolkit.config import TrainConfig
    from toolkit.models.configs import Runtime, get_config
    from toolkit.models.build import build_model
    from toolkit.models.lora import LoRAConfig
    from toolkit.train.loop import make_optimizer
    from toolkit.train.step import make_train_step, split_model

    cfg = get_config(model)
    t0 = time.perf_counter()
    abstract = nnx.eval_shape(lambda: build_model(cfg, runtime=Runtime(scan_layers=scan_layers), lora=LoRAConfig(),
                                                  rngs=nnx.Rngs(0)))
    parts = split_model(abstract)
    tx, _ = make_optimizer(TrainConfig(), total_steps=100)
    opt_state = jax.eval_shape(tx.init, parts.lora)
    step = make_train_step(parts.train_graph, tx)
    s = jax.ShapeDtypeStruct
    batch_spec = {"tokens": s((batch, length), jnp.int32), "lengths": s((batch,), jnp.int32),
                  "labels": s((batch,), jnp.int32), "weights": s((batch,), jnp.float32)}
    head = {"tokens": s((32,), jnp.int32), "length": s((), jnp.int32)}
    t1 = time.perf_counter()
    lowered = step.lower(parts.lora, opt_state, parts.frozen, parts.rest, batch_spec, s((2,), jnp.int32), head)
    t2, cpu2 = time.perf_counter(), time.process_time()
    lowered.compile()
    t3, cpu3 = time.perf_counter(), time.process_time()
    return {"scan_layers": scan_layers, "model": model, "num_layers": cfg.num_layers, "batch": [batch, length],
            "abstract_model_s": round(t1 - t0, 3), "lower_s": round(t2 - t1, 3), "compile_s": round(t3 - t2, 3),
            "compile_cpu_s": round(cpu3 - cpu2, 3), "total_s": round(t3 - t0, 3),
            "hlo_text_chars": len(lowered.as_text())}


def aot(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # time compiling, not a cache read
    out: dict[str, Any] = {"model": args.aot_model, "batch": args.aot_batch, "length": args.aot_length}
    for scan in (True, False):
        key = "scanned" if scan else "unrolled"
        try:
            out[key] = aot_compile(args.aot_model, scan, args.aot_batch, args.aot_length)
        except MemoryError as e:
            out[key] = {"scan_layers": scan, "compile_s": None, "reason": f"out of memory: {e}"}
    s, u = out["scanned"].get("compile_s"), out["unrolled"].get("compile_s")
    out["unrolled_over_scanned"] = round(u / s, 2) if s and u else None
    return out


# ----------------------------------------------------------------------------- main
def environment() -> dict[str, Any]:
    import jax

    return {"python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m", help="what AgileClassifier loads (e.g. random:tiny_gemma3)")
    ap.add_argument("--rows", type=int, default=200, help="first N ETHOS training rows")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None, help="ETHOS csv dir (default: $AGILE_TOOLKIT_DATA/ethos, else the cache, else a download)")
    ap.add_argument("--skip-aot", action="store_true")
    ap.add_argument("--aot-only", action="store_true", help="only the AOT compile (no fits, no matmul peak)")
    ap.add_argument("--skip-cold", action="store_true",
                    help="no cold/warm pair: one fit on the compilation cache you already have")
    ap.add_argument("--aot-model", default="gemma_7b", help="named config for the AOT compile")
    ap.add_argument("--aot-batch", type=int, default=8)
    ap.add_argument("--aot-length", type=int, default=256)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--cache-min-compile-seconds", type=float, default=1.0,
                    help="programs faster to compile are not cached (enable_compilation_cache's default)")
    ap.add_argument("--timeout", type=float, default=3600, help="per fit process, seconds")
    ap.add_argument("--out", type=Path, default=RESULT, help="where the JSON goes ('-' = stdout only)")
    ap.add_argument("--child-fit", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--peak-tflops", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_fit:
        child_fit(args)
        return None

    from bench.matmul_peak import matmul_peak_gflops

    t0 = time.perf_counter()
    if args.aot_only:
        result = {"benchmark": "first_fit --aot-only", "environment": environment(), "aot_train_step": aot(args)}
        return _finish(result, args, t0)
    result: dict[str, Any] = {"benchmark": "first_fit", "model": args.model, "rows": args.rows,
                              "epochs": args.epochs, "recipe": "default (bench/recipe_search.py)",
                              "environment": environment()}
    peak = matmul_peak_gflops(args.matmul_n)
    result["matmul_peak_gflops"] = round(peak, 2)
    n = args.matmul_n
    result["matmul"] = f"fp32 ({n}x{n}) @ ({n}x{n}), jitted, best of 3 rounds of 10"
    fit = None
    if args.skip_cold:
        result["cold"] = None
        result["warm"] = fit = run_fit_process(args, None, peak / 1e3)
        result["warm"]["note"] = "--skip-cold: a fresh process on the existing compilation cache (state not controlled)"
    else:
        cache = tempfile.mkdtemp(prefix="first-fit-jax-cache-")
        try:
            result["cold"] = fit = run_fit_process(args, cache, peak / 1e3)
            files = [p for p in Path(cache).rglob("*") if p.is_file()]
            result["cache_after_cold"] = {"files": len(files), "bytes": sum(p.stat().st_size for p in files),
                                          "min_compile_seconds": args.cache_min_compile_seconds}
            result["warm"] = run_fit_process(args, cache, peak / 1e3)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        c, w = result["cold"], result["warm"]
        result["warm_over_cold_total"] = round(w["total_s"] / c["total_s"], 3) if c["total_s"] else None
    steady_from = result["warm"] or fit
    result["steady_train"] = steady_rate(steady_from, peak)
    result["steady_train"]["from"] = "warm" if result["warm"] else "cold"
    result["aot_train_step"] = None if args.skip_aot else aot(args)
    return _finish(result, args, t0)


def _finish(result: dict[str, Any], args: argparse.Namespace, t0: float) -> dict[str, Any]:
    """Stamp the end of the run, print the JSON and write it atomically to `--out`."""
    result["environment"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1, default=float))
    if str(args.out) != "-":
        from toolkit.io_utils import write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
