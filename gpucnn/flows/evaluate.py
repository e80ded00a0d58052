"""``python -m gpucnn.flows.evaluate``: the command ``gpucnn evaluate`` (gpucnn.cli.evaluate),
with the same options and exit statuses."""

import sys

from gpucnn.cli.evaluate import main, parser

__all__ = ["main", "parser"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m gpucnn.flows.evaluate"))
