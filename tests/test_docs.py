"""The documentation tells the truth and keeps telling it.

The manual's results page (docs/results.md) quotes figures in its text: each is read here from
the committed file in benchmarks/results/ it comes from, formatted as the page writes it, and
must appear on the page, so a result re-run and recorded without its sentence (or a sentence
changed without its result) fails here. (The page's tables are generated from those files when
the manual is built: docs/_ext/gpucnn_docs.py.)

The README stays a landing page: two set-up lines a newcomer copies (the main job; the tests,
installing what CI installs), the offline mirror setting beside them, a length bound, no
figures and no history, and links that lead somewhere."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README_FILE = ROOT / "README.md"
README = README_FILE.read_text(encoding="utf-8")
# the results page's prose, its line breaks read as spaces
PAGE = " ".join((ROOT / "docs" / "results.md").read_text(encoding="utf-8").split())


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
        f"a plain loop of the README's API tour runs at {n('gpucnn-serial')} ({plain[0]}x PyTorch, "
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


def transfer() -> list[str]:
    text = _read("transfer-learning-cpu.md")
    rows = dict(
        (int(n), (_pct(head), _pct(scratch)))
        for n, head, scratch in re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    )
    return [
        f"From 50 labelled images of 5–9, a 645-parameter head on the frozen pretrained features "
        f"reaches {rows[50][0]} where the whole network trained from scratch on the same images "
        f"reaches {rows[50][1]}",
        f"at 1,000 labels, {rows[1000][0]} against {rows[1000][1]}",
    ]


def image_cache() -> list[str]:
    text = _read("image-cache.md")
    (n,) = _find(r"the folder: ([\d,]+) real MNIST", text, "image-cache.md")
    first, *_ = _find(r"\| first run[^|]*\| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s \|", text, "")
    second, _, wall = _find(
        r"\| second run[^|]*\| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s \|", text, ""
    )
    return [
        f"decoding a folder of {n} images (PNG and JPEG, three sizes) into its cache takes "
        f"{first} s; a second run over the same folder has its data ready in {second} s "
        f"({wall} s for the whole fresh process, Python's start included)"
    ]


def cache_memory() -> list[str]:
    text = _read("cache-memory.md")
    n, gb = _find(r"the cache: ([\d,]+) uint8 images of 3x32x32, ([\d.]+) GB", text, "")
    peak, imports, pages, end = _find(
        r"\(VmHWM\) \| \*\*(\d+) MB\*\* \|.*?before the cache was mapped \| (\d+) MB \|"
        r".*?\(RssFile, every 20 batches\) \| (\d+) MB \|.*?end of the epoch \| (\d+) MB \|",
        text,
        "cache-memory.md",
    )
    return [
        f"over a {gb} GB memory-mapped cache of {n} images of 3×32×32 peaks at **{peak} MB** "
        f"resident ({imports} MB after the imports; at most {pages} MB of the cache's pages "
        f"held at once; {end} MB at the end of the epoch)"
    ]


def colour() -> list[str]:
    out = []
    for name, threads in (("colour-cpu-1thread.md", "1 thread"), ("colour-cpu.md", "2 threads")):
        text = _read(name)
        g_rate, g_s = _find(r"(?m)^\| gpucnn \| (\d+) \| [^|]+ \| (\d+) s \|$", text, name)
        t_rate, t_s = _find(r"(?m)^\| torch \| (\d+) \| [^|]+ \| (\d+) s \|$", text, name)
        (ratio,) = _find(r"gpucnn / PyTorch epoch time: ([\d.]+)x", text, name)
        (load,) = _find(r"load average before the run \(1, 5, 15 min\): ([\d.]+),", text, name)
        out.append(
            f"{threads} each, gpucnn trains {g_rate} images/s against PyTorch's {t_rate}: "
            f"an epoch of 45,000 images in {g_s} s against {t_s} s ({ratio}x PyTorch's time; "
            f"load average {load})"
        )
    return out


SOURCES = [
    article,
    article_monitor_val_accuracy,
    augmented,
    fast,
    throughput,
    winograd,
    errors,
    transfer,
    image_cache,
    cache_memory,
    colour,
]


@pytest.mark.parametrize("source", SOURCES, ids=lambda f: f.__name__)
def test_the_results_page_quotes_the_committed_results(source):
    missing = [s for s in source() if " ".join(s.split()) not in PAGE]
    assert not missing, "docs/results.md does not say, as benchmarks/results/ does:\n" + (
        "\n".join(missing)
    )


def setup_block() -> list[str]:
    """The README's set-up block (the first fenced block under "## Set up"), line by line."""
    section = README.split("## Set up", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def test_the_readme_has_two_set_up_lines_the_first_runs_the_main_job():
    commands = [line for line in setup_block() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].endswith("&& gpucnn train"), commands[0]
    assert commands[1].endswith("&& pytest"), commands[1]


def test_the_readme_test_line_installs_what_ci_installs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # the first install: what the tests run with (the manual's build installs "docs" after them)
    extras = re.findall(r'pip install -q -e "\.\[([a-z0-9,_-]+)\]"', ci)[0]
    (line,) = [s for s in setup_block() if s.endswith("&& pytest")]
    assert f'pip install -e ".[{extras}]" && pytest' in line


def test_the_readme_set_up_block_says_how_to_run_offline():
    assert any("GPUCNN_DATA_MIRROR=" in line for line in setup_block() if line.startswith("#"))


def test_the_readme_is_a_landing_page():
    lines = README.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: the manual (docs/) holds the rest"


# what a figure looks like in prose: a percentage, a ratio, a rate, a duration
FIGURE = re.compile(
    r"\d[\d,.]*\s?(%|x\b|×\s|images/s|ms\b|s\b|seconds|minutes?\b|hours?\b|MiB|MB|GB)"
)
HISTORY = re.compile(r"\b(now|yet|so far|this round|targets?|no longer|used to)\b", re.I)


def prose(text: str) -> str:
    """The README without its fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_the_readme_quotes_no_figures_and_tells_no_history():
    text = prose(README)
    assert not FIGURE.findall(text), [m.group(0) for m in FIGURE.finditer(text)]
    assert not HISTORY.findall(text), [m.group(0) for m in HISTORY.finditer(text)]


def test_the_readme_links_lead_somewhere():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert local, "README.md links nowhere into the manual"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(p.name for p in RESULTS.glob("*.md")))
def test_each_results_table_comes_with_its_command_and_machine(name):
    """What the manual shows beside each generated table (docs/_ext/gpucnn_docs.py)."""
    pytest.importorskip("sphinx", reason="the manual's extension needs the 'docs' extra")
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        import gpucnn_docs
    finally:
        sys.path.remove(str(ROOT / "docs" / "_ext"))
    tables = gpucnn_docs.tables(RESULTS / name)
    assert tables, f"benchmarks/results/{name} has no table"
    for t in tables:
        assert t.command and t.machine, f"{name}: a table without its command or machine"
