"""The gpucnn manual: Sphinx, the furo theme, MyST Markdown and notebooks (myst-nb), and the
API reference from the docstrings (autodoc + napoleon, Google style).

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs build/docs/html

docs/architecture.md ("Building this manual") says why these tools and what the build
generates: the results pages from benchmarks/results/, the commands' --help, and the rendered
notebooks (executed copies in build/notebooks/, made by tests/test_notebooks.py or, when
missing, by this build).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # this checkout's gpucnn, whatever is installed
sys.path.insert(0, str(DOCS / "_ext"))

import gpucnn  # noqa: E402

project = "gpucnn"
author = "the gpucnn authors"
copyright = "the gpucnn authors, MIT licence"
release = version = gpucnn.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "gpucnn_docs",  # docs/_ext: results tables, --help, the notebooks and results records
]

root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# MyST: $...$ and $$...$$ math (the notebooks), ::: fences, definition lists, anchors for
# headings down to level 3 so that pages can link to sections
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# notebooks are rendered from their executed copies (gpucnn_docs puts them in docs/article/),
# never executed by myst-nb itself
nb_execution_mode = "off"
nb_merge_streams = True

# the API reference: Google-style docstrings as written (Args / Returns / Raises / Shape)
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented"  # types beside what the docstring says
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}
autodoc_mock_imports = ["cupy", "numba.cuda"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Shape:" on a line of its own heads a section, as "Args:" does
napoleon_custom_sections = ["Shape"]
napoleon_use_rtype = False

# references to names outside gpucnn (numpy arrays, typing) are not resolved: there is no
# intersphinx (the build runs offline), so autodoc's cross-references to them stay plain text
nitpicky = False

html_theme = "furo"
html_title = f"gpucnn {version}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}
# options and commands keep their two hyphens ("--lr", not "–lr")
smartquotes = False
