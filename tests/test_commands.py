"""The console scripts: each one pyproject declares is a `toolkit.commands` module's `entry`,
answers `--help`, and (once the package is installed, as `.ci/run` does) is on PATH."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_is_a_console_script_and_a_launch_file():
    assert set(SCRIPTS) == {"agile-train", "agile-sweep", "agile-export", "agile-report", "agile-generate",
                            "agile-predict", "agile-label", "agile-plan"}
    for script, target in SCRIPTS.items():
        module, func = target.split(":")
        assert func == "entry" and module == f"toolkit.commands.{script.removeprefix('agile-')}"
        assert callable(getattr(importlib.import_module(module), "entry"))
        assert (ROOT / "launch" / f"{script.removeprefix('agile-')}.py").is_file()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_exits_0(script, capsys):
    main = importlib.import_module(f"toolkit.commands.{script.removeprefix('agile-')}").main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("agile-train") is None, reason="the package is not installed (pip install -e .)")
def test_the_installed_script_runs_and_a_mistake_is_one_line(tmp_path):
    r = subprocess.run(["agile-train", "--config", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                       timeout=120, env=subprocess_env())
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "missing.yaml" in lines[0], r.stderr[-2000:]


@pytest.mark.parametrize("module, name", __import__("toolkit.cli").cli.USER_ERRORS)
def test_every_user_error_the_handler_knows_exists_where_it_looks(module, name):
    """The handler matches errors by (module, class name): a class that moved would turn a
    user's one-line mistake back into a 'this is a bug' traceback."""
    cls = getattr(importlib.import_module(module), name, None)
    assert isinstance(cls, type) and issubclass(cls, Exception), f"{module}.{name} is gone"


@pytest.mark.slow
def test_tensorflow_starts_quietly_unless_asked(tmp_path):
    """TensorFlow's C++ start-up lines (CUDA probing on a CPU machine, oneDNN notices) are
    written before its log level is read; the toolkit imports it with them dropped."""
    code = ("import sys; from toolkit.quiet import import_quietly; tf = import_quietly('tensorflow'); "
            "print('imported', file=sys.stderr)")
    env = {k: v for k, v in subprocess_env().items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AGILE_TOOLKIT_VERBOSE")}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and quiet.stderr.strip().splitlines() == ["imported"], quiet.stderr[-2000:]
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "AGILE_TOOLKIT_VERBOSE": "1"})
    assert loud.returncode == 0 and loud.stderr.strip().splitlines()[-1] == "imported"
