"""``python -m gpucnn.flows.sweep``: the command ``gpucnn sweep`` (gpucnn.cli.sweep), with the
same options and exit statuses."""

import sys

from gpucnn.cli.sweep import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m gpucnn.flows.sweep"))
