"""``python -m gpucnn.flows.train``: the command ``gpucnn train`` (gpucnn.cli.train), with the
same options and exit statuses."""

import sys

from gpucnn.cli.train import main, parser

__all__ = ["main", "parser"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m gpucnn.flows.train"))
