"""The ``gpucnn`` command: one entry point whose subcommands are the module commands, with
their options and exit statuses, and whose help answers at once without Prefect.

Real subprocesses: ``python -m gpucnn`` and the console script pyproject.toml declares (its
entry function called as the installed script calls it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("prefect", "cupy", "torch", "matplotlib")

# the installed console script's body, its entry point read from pyproject.toml, recording
# at exit which heavy modules it imported (on stderr's last line)
SCRIPT = """
import atexit, importlib, sys
atexit.register(lambda: print("imported:", *[m for m in {heavy} if m in sys.modules],
                              file=sys.stderr))
module, _, name = {entry!r}.partition(":")
sys.argv[0] = "gpucnn"
sys.exit(getattr(importlib.import_module(module), name)())
"""

# the subcommands that are also modules: the same command under its module name
MODULES = {
    "train": "gpucnn.flows.train",
    "evaluate": "gpucnn.flows.evaluate",
    "sweep": "gpucnn.flows.sweep",
    "predict": "gpucnn.predict",
    "doctor": "gpucnn.doctor",
}


def entry() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["gpucnn"]


def run(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def script(*args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The console script run with ``args``: its result, and the heavy modules it imported."""
    out = run("-c", SCRIPT.format(heavy=HEAVY, entry=entry()), *args)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("imported:"), out.stderr
    return out, last.split()[1:]


def options(help_text: str) -> set[str]:
    """The options a --help text names (its usage line's program name aside)."""
    text = help_text.replace("python -m ", "")
    return set(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", text))


def test_the_console_script_explains_every_command_at_once_without_prefect():
    assert entry() == "gpucnn.cli:main"
    t0 = time.perf_counter()
    out, imported = script("--help")
    assert time.perf_counter() - t0 < 10
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: gpucnn [-h] [--version] COMMAND [ARGS...]")
    for name in ("train", "evaluate", "predict", "export", "sweep", "doctor"):
        assert re.search(rf"\n  {name} +\w", out.stdout), name
    assert imported == []
    out, _ = script("--version")
    from gpucnn import __version__

    assert (out.returncode, out.stdout.strip()) == (0, f"gpucnn {__version__}")


@pytest.mark.parametrize("name", ["train", "evaluate", "predict", "export", "sweep", "doctor"])
def test_each_subcommand_has_fast_help_and_the_options_of_its_module(name):
    t0 = time.perf_counter()
    out, imported = script(name, "--help")
    assert time.perf_counter() - t0 < 10
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: gpucnn {name} ")
    assert imported == [], imported
    text = " ".join(out.stdout.split())
    assert "exit status: 0 done, 1 a failure at run time" in text or "Exit status: 0 all" in text
    if name in MODULES:
        module = run("-m", MODULES[name], "--help")
        assert module.returncode == 0 and module.stdout.startswith(
            f"usage: python -m {MODULES[name]}"
        )
        assert options(out.stdout) == options(module.stdout)


def test_python_m_gpucnn_is_the_command():
    out = run("-m", "gpucnn", "doctor", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m gpucnn doctor ")
    assert "-v, --verbose" in out.stdout


@pytest.mark.parametrize(
    ("args", "status", "said", "as_module"),
    [
        ([], 2, "commands:", False),
        (["tran"], 2, "invalid choice: 'tran'", False),
        (["train", "--model", "alexnet"], 2, "invalid choice: 'alexnet'", True),
        (["train", "--lr", "-1", "--output-dir", "{tmp}/runs"], 2, "lr must be a finite", False),
        (["sweep", "--grid", "nope=1", "--output-dir", "{tmp}/s"], 2, "FIELD=V1,V2", False),
        (["evaluate", "{tmp}/nope.npz"], 1, "CheckpointError: checkpoint {tmp}/nope.npz", True),
        (["export", "{tmp}/nope.npz", "{tmp}/m.onnx"], 1, "CheckpointError: checkpoint", False),
        (["predict", "--checkpoint", "{tmp}/nope.npz", "x.png"], 1, "{tmp}/nope.npz", False),
        (["export", "{tmp}/nope.npz"], 2, "the following arguments are required: path", False),
    ],
)
def test_exit_statuses_are_the_modules(tmp_path, args, status, said, as_module):
    args = [a.format(tmp=tmp_path) for a in args]
    out = run("-m", "gpucnn", *args)
    assert out.returncode == status, out.stderr
    assert said.format(tmp=tmp_path) in out.stderr
    assert "Traceback" not in out.stderr
    if as_module:  # the module says the same, with the same status
        module = run("-m", MODULES[args[0]], *args[1:])
        assert module.returncode == status
        assert module.stderr.splitlines()[-1] == out.stderr.splitlines()[-1].replace(
            f"python -m gpucnn {args[0]}", f"python -m {MODULES[args[0]]}"
        )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s").exists()


@pytest.fixture
def checkpoint(tmp_path):
    from gpucnn import models, nn, optim
    from gpucnn.train import Trainer

    model = models.build("seed", seed=0)
    config = {"model": "seed", "dataset": "mnist"}
    t = Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), progress=False,
        config=config,
    )  # fmt: skip
    return t.save_checkpoint(tmp_path / "ck.npz")


def test_export_writes_the_model_as_onnx_with_or_without_preprocessing(tmp_path, checkpoint):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import gpucnn

    predictor = gpucnn.load(checkpoint)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for extra, key in (([], "logits"), (["--with-preprocessing"], "probabilities")):
        path = tmp_path / f"{key}.onnx"
        out = run("-m", "gpucnn", "export", checkpoint, path, *extra)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"file": str(path), "preprocessing": bool(extra)}
        assert out.stderr.strip() == f"wrote {path}"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        if extra:
            (got,) = session.run(None, {feed.name: pixels})
            want = predictor.predict_proba(pixels)
        else:
            x = ((pixels / 255 - 0.1307) / 0.3081).astype(np.float32)[:, None]
            (got,) = session.run(None, {feed.name: x})
            want = predictor.module.eval()(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
