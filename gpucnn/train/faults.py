"""Named moments of a run folder's commit sequence, where a test can kill the process.

Every write that a resumed run depends on (checkpoints, history, summary) passes through
:func:`point` at each of its steps: ``"<file>:written"`` (the new bytes are on disk under a
temporary name), ``"<file>:rotated"`` (the previous version was moved aside) and
``"<file>:replaced"`` (the new version carries the final name). With the environment variable
``GPUCNN_KILL_AT=<name>[#<n>]`` the process sends itself SIGKILL at the n-th time (default 1)
it reaches that moment, which is how tests/train/test_commit.py proves that a kill at any
step leaves a run folder that resumes to the same result. Unset, a point costs one dict
lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "GPUCNN_KILL_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """Mark the moment ``name``; SIGKILL this process when GPUCNN_KILL_AT names it."""
    target = os.environ.get(ENV)
    if not target:
        return
    wanted, _, nth = target.partition("#")
    if wanted != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
