"""gpucnn's version, in one place (``gpucnn.__version__``, and what exported models record)."""

__version__ = "0.1.0"
