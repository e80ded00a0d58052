"""``python -m gpucnn``: the ``gpucnn`` command (gpucnn.cli)."""

import sys

from gpucnn.cli import main

sys.exit(main(prog="python -m gpucnn"))
