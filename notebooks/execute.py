"""Run the notebooks top to bottom, headless, and keep the executed copies for the manual.

    python notebooks/execute.py                     # all three, into build/notebooks/
    python notebooks/execute.py 2-build-and-train.ipynb

The committed notebooks carry no outputs. tests/test_notebooks.py runs each one through
:func:`execute` and, when it passes, keeps the executed copy with :func:`save`; the manual's
build (docs/conf.py) renders those copies, outputs included, and runs a notebook itself only
when its copy is missing or was made from another version of the notebook (:func:`current`).
So CI, which runs the tests before it builds the manual, runs each notebook once.

A run happens in a temporary folder, with ``GPUCNN_NOTEBOOK_FLOW=check`` (notebook 3's
Prefect cell then checks its command instead of starting Prefect: the flow tests run it) and
the environment's data settings (``GPUCNN_DATA_DIR``, ``GPUCNN_DATA_MIRROR``), as a reader's
Jupyter would find MNIST. Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
NAMES = ("1-the-math.ipynb", "2-build-and-train.ipynb", "3-improve.ipynb")
EXECUTED = ROOT / "build" / "notebooks"  # ignored by git (build/)
CELL_TIMEOUT_S = 600
FLOW_ENV = ("GPUCNN_NOTEBOOK_FLOW", "check")


def digest(name: str) -> str:
    """SHA-256 of the committed notebook: what an executed copy was made from."""
    return hashlib.sha256((FOLDER / name).read_bytes()).hexdigest()


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def execute(name: str, workdir: str | os.PathLike, timeout: int = CELL_TIMEOUT_S) -> Any:
    """Run notebook ``name`` in a fresh kernel whose working folder is ``workdir``.

    Returns the executed notebook (an nbformat node, outputs included). Raises
    ``nbclient.exceptions.CellExecutionError`` naming the cell that stopped it.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(FOLDER / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},  # the kernel's working folder
    )
    with _env(*FLOW_ENV):  # the kernel inherits this process's environment
        client.execute()
    return nb


def save(nb: Any, name: str, folder: Path = EXECUTED) -> Path:
    """Keep an executed copy of notebook ``name``, marked with the digest of its source."""
    import nbformat

    nb.metadata.setdefault("gpucnn", {})["source_sha256"] = digest(name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_name(f".{name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return path


def current(name: str, folder: Path = EXECUTED) -> Path | None:
    """The executed copy of notebook ``name`` if it was made from the committed version."""
    import nbformat

    path = folder / name
    if not path.exists():
        return None
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # a copy cut short or from another tool: make it again
        return None
    made_from = nb.metadata.get("gpucnn", {}).get("source_sha256")
    return path if made_from == digest(name) else None


def ensure(name: str, folder: Path = EXECUTED) -> Path:
    """The current executed copy of notebook ``name``, running the notebook if there is none."""
    path = current(name, folder)
    if path is None:
        print(
            f"running notebooks/{name} (no executed copy of this version in {folder})",
            file=sys.stderr,
        )
        with tempfile.TemporaryDirectory(prefix="gpucnn-notebook-") as work:
            path = save(execute(name, work), name, folder)
    return path


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(NAMES)
    for name in names:
        if name not in NAMES:
            print(f"unknown notebook {name!r}; one of {', '.join(NAMES)}", file=sys.stderr)
            return 2
        print(ensure(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
