"""What the manual generates at build time, so that it cannot drift from the repository.

- ``{results-table} FILE``: a table from ``benchmarks/results/FILE`` (``:table: N``, the Nth
  table of the file, from 1), followed by the command that made it, the machine and the
  date, and a link to the whole record.
- ``{command-help} gpucnn [COMMAND]``: the ``--help`` of the ``gpucnn`` command (or of one of
  its subcommands), as it prints it; ``{command-help} MODULE``: that of ``python -m MODULE``.
- The records: every ``benchmarks/results/*.md`` becomes a page ``records/<name>``
  (docs/records/, generated, ignored by git) that includes the file.
- The notebooks: the executed copies of ``notebooks/*.ipynb`` (notebooks/execute.py; made by
  tests/test_notebooks.py, or here when missing) are copied to docs/article/ (ignored by
  git), where myst-nb renders them with their outputs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import SphinxError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LOG = logging.getLogger(__name__)
DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
RESULTS = ROOT / "benchmarks" / "results"
RECORDS = DOCS / "records"  # generated
ARTICLE = DOCS / "article"  # generated: the executed notebooks
HELP_COLUMNS = "92"


class NotebookError(SphinxError):
    category = "Notebook error"


@dataclass
class Table:
    lines: list[str]
    heading: str  # the nearest heading above the table
    command: str
    machine: str
    date: str


def _field(lines: list[str], start: int, key: str) -> str:
    """The value of the ``- key: value`` line nearest above line ``start`` (else the first
    one below it)."""
    pattern = re.compile(rf"^- {key}: (.+)$")
    above = [m.group(1) for m in map(pattern.match, lines[:start]) if m]
    if above:
        return above[-1].strip()
    below = [m.group(1) for m in map(pattern.match, lines[start:]) if m]
    return below[0].strip() if below else ""


def tables(path: Path) -> list[Table]:
    """The tables of a results file, each with its heading, command, machine and date."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            headings = [h.lstrip("#").strip() for h in lines[:i] if h.startswith("#")]
            found.append(
                Table(
                    lines[i:j],
                    headings[-1] if headings else "",
                    _field(lines, i, "command").strip("`"),
                    _field(lines, i, "machine"),
                    _field(lines, i, "date"),
                )
            )
            i = j
        else:
            i += 1
    return found


def title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


class ResultsTable(SphinxDirective):
    """A table from a results file, with its command, machine and date."""

    required_arguments = 1
    option_spec = {"table": directives.positive_int, "caption": directives.unchanged}
    has_content = False

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        path = RESULTS / name
        if not path.is_file():
            raise self.error(f"results-table: no file benchmarks/results/{name}")
        self.env.note_dependency(str(path))
        found = tables(path)
        n = self.options.get("table", 1)
        if n > len(found):
            raise self.error(f"results-table: benchmarks/results/{name} has {len(found)} tables")
        table = found[n - 1]
        caption = self.options.get("caption") or table.heading
        about = [f"`benchmarks/results/{name}` ({{doc}}`the whole record </records/{path.stem}>`)"]
        if table.command:
            about.append(f"command `{table.command}`")
        if table.machine:
            about.append(f"machine: {table.machine}")
        if table.date:
            about.append(f"date: {table.date}")
        text = [f"**{caption}**", "", *table.lines, "", "From " + "; ".join(about) + "."]
        box = nodes.container(classes=["results-table"])
        self.state.nested_parse(StringList(text, source=str(path)), self.content_offset, box)
        return [box]


class CommandHelp(SphinxDirective):
    """The ``--help`` of ``gpucnn [COMMAND]`` or of ``python -m MODULE``, run at build time."""

    required_arguments = 1
    final_argument_whitespace = True  # "gpucnn train": one argument
    has_content = False

    def run(self) -> list[nodes.Node]:
        words = self.arguments[0].split()
        if words[0] == "gpucnn":  # the console script, run as its entry point runs it
            shown = " ".join(words)
            code = "import sys; from gpucnn.cli import main; sys.exit(main())"
            argv = [sys.executable, "-c", code, *words[1:], "--help"]
        else:
            shown = f"python -m {words[0]}"
            argv = [sys.executable, "-m", words[0], "--help"]
        env = dict(os.environ, COLUMNS=HELP_COLUMNS, PYTHONPATH=str(ROOT))
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        if done.returncode != 0:
            raise self.error(f"{shown} --help failed:\n{done.stderr}")
        text = f"$ {shown} --help\n{done.stdout.rstrip()}"
        block = nodes.literal_block(text, text, language="text")
        return [block]


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_records() -> None:
    """docs/records/<name>.md for every results file, and nothing else there."""
    wanted = {}
    for path in sorted(RESULTS.glob("*.md")):
        rel = os.path.relpath(path, RECORDS)
        wanted[path.stem + ".md"] = (
            f"% generated by docs/_ext/gpucnn_docs.py from {rel}: edit that file\n\n"
            f"```{{include}} {rel}\n```\n"
        )
    for stale in RECORDS.glob("*.md") if RECORDS.exists() else []:
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        _write_if_changed(RECORDS / name, text.encode())


def _runner():
    path = ROOT / "notebooks" / "execute.py"
    spec = importlib.util.spec_from_file_location("notebooks_execute", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_notebooks() -> None:
    """docs/article/<name>.ipynb: the executed copies, made here when missing or stale."""
    runner = _runner()
    for name in runner.NAMES:
        try:
            path = runner.ensure(name)
        except Exception as exc:  # a cell failed, or the notebooks extra is missing
            last = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-8:]
            raise NotebookError(
                f"notebooks/{name} has no executed copy made from this version in "
                f"{runner.EXECUTED} (pytest tests/test_notebooks.py leaves one), and running it "
                "here failed (MNIST comes from GPUCNN_DATA_DIR, GPUCNN_DATA_MIRROR or the "
                "cache, as in a notebook):\n" + "\n".join(last)
            ) from None
        _write_if_changed(ARTICLE / name, path.read_bytes())


def generate(app: Sphinx) -> None:
    write_records()
    copy_notebooks()


def setup(app: Sphinx) -> dict:
    app.add_directive("results-table", ResultsTable)
    app.add_directive("command-help", CommandHelp)
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
