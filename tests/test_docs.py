"""The README tells the truth and keeps telling it: each result figure it quotes is read here
from the committed file in benchmarks/results/ it comes from, formatted as the README writes
it, and must appear in the README; its test line installs what CI installs. A result re-run
and recorded without its README sentence (or the other way round) fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# the README's prose, its line breaks read as spaces
README = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def _read(name: str) -> str:
    return (RESULTS / name).read_text(encoding="utf-8")


def _find(pattern: str, text: str, name: str) -> tuple[str, ...]:
    m = re.search(pattern, text, re.S)
    assert m, f"benchmarks/results/{name}: no match for {pattern!r}"
    return m.groups()


def _pct(fraction: str) -> str:
    return f"{100 * float(fraction):.2f}%"


def _accuracy(name: str) -> tuple[str, str, str, float]:
    """(test accuracy as a percentage, best epoch, epochs, training seconds)."""
    acc, best, epochs, train_s = _find(
        r"\*\*Test accuracy ([\d.]+)\*\*.*?best epoch (\d+) of (\d+), training (\d+) s",
        _read(name),
        name,
    )
    return _pct(acc), best, epochs, float(train_s)


def article() -> list[str]:
    acc, best, epochs, train_s = _accuracy("accuracy-article.md")
    return [
        f"| validation loss (best epoch {best}) | {epochs} | {acc} |",
        f"about {round(train_s / 60)} minutes of training",
    ]


def article_monitor_val_accuracy() -> list[str]:
    acc, best, epochs, _ = _accuracy("accuracy-article-monitor-val-accuracy.md")
    return [
        f"| validation accuracy (`--monitor val_accuracy`, best epoch {best}) | {epochs} | {acc} |"
    ]


def augmented() -> list[str]:
    acc, best, epochs, train_s = _accuracy("accuracy-augmented.md")
    return [f"reached **{acc}** test accuracy after {epochs} epochs"]


def fast() -> list[str]:
    text = _read("fast-cpu.md")
    g_acc, g_min, g_s, t_acc, t_s, ratio = _find(
        r"gpucnn: mean test accuracy ([\d.]+) \(min ([\d.]+)\), mean training time ([\d.]+) s; "
        r"PyTorch: ([\d.]+) \(min [\d.]+\), ([\d.]+) s; gpucnn's time is ([\d.]+)x",
        text,
        "fast-cpu.md",
    )
    return [
        f"**{_pct(g_acc)} mean test accuracy over 5 seeds (min {_pct(g_min)})**",
        f"in {g_s} s of training per seed against PyTorch's {t_s} s for the same recipe "
        f"({ratio}x its time; PyTorch reaches {_pct(t_acc)})",
    ]


def throughput() -> list[str]:
    text = _read("epoch-cpu-2threads.md").split("## Before", 1)[0]  # not the older code's
    rows = dict(
        re.findall(r"^\| (gpucnn|gpucnn-serial|torch|torch-malloc) \| (\d+) \|", text, re.M)
    )
    assert set(rows) == {"gpucnn", "gpucnn-serial", "torch", "torch-malloc"}, rows
    trainer = _find(r"\| Trainer step [^|]*\| \*\*([\d.]+)x\*\* \| \*\*([\d.]+)x\*\* \|", text, "")
    plain = _find(r"\| plain loop[^|]*\| \*\*([\d.]+)x\*\* \| \*\*([\d.]+)x\*\* \|", text, "")
    n = lambda key: f"{int(rows[key]):,}"  # noqa: E731
    return [
        f"**{n('gpucnn')} images/s against PyTorch 2.13's {n('torch')} ({trainer[0]}x)**",
        f"PyTorch run with the same glibc settings reaches {n('torch-malloc')}, so against "
        f"that gpucnn is {trainer[1]}x",
        f"a plain loop of the API tour above runs at {n('gpucnn-serial')} ({plain[0]}x PyTorch, "
        f"{plain[1]}x with its malloc settings)",
    ]


def winograd() -> list[str]:
    text = _read("winograd-cpu.md")
    one = text.split("## 1 thread", 1)[1].split("## 2 threads", 1)[0]
    im2col, f2, f4, torch, r2, r4, _ = _find(
        r"\| seed conv2 \+ ReLU \+ pool \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| "
        r"([\d.]+)x \| ([\d.]+)x \| ([\d.]+)x \|",
        one,
        "winograd-cpu.md",
    )
    return [f"{im2col} ms by im2col + GEMM, {f4} ms by F(4×4, 3×3) ({r4}x)"]


def errors() -> list[str]:
    text = _read("winograd-error-cpu.md")
    rows = re.findall(r"^\| 32→64, 14×14, pad 1 \| ([^|]+) \| ([\d.e+-]+) \|", text, re.M)
    y = {name.strip(): value for name, value in rows}
    return [
        f"largest float32 error {y['winograd F(2x2,3x3)']} of the largest output for "
        f"F(2×2, 3×3), {y['winograd F(4x4,3x3)']} for F(4×4, 3×3) and {y['im2col']} for im2col"
    ]


SOURCES = [article, article_monitor_val_accuracy, augmented, fast, throughput, winograd, errors]


@pytest.mark.parametrize("source", SOURCES, ids=lambda f: f.__name__)
def test_the_readme_quotes_the_committed_results(source):
    missing = [s for s in source() if " ".join(s.split()) not in README]
    assert not missing, "README.md does not say, as benchmarks/results/ does:\n" + "\n".join(
        missing
    )


def test_the_readme_test_line_installs_what_ci_installs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (extras,) = re.findall(r'pip install -q -e "\.\[([a-z0-9,_-]+)\]"', ci)
    assert f'pip install -e ".[{extras}]" && pytest' in README
