"""Kernels made wrong on purpose, for the tests of the checks that must catch them."""

from __future__ import annotations


class Corrupt:
    """A kernel that runs the real one, then adds 1 to its output argument (``out``, an index
    into its arguments): what a miscompiled or mis-indexed kernel looks like from outside.
    ``launches`` counts its launches."""

    def __init__(self, kernel, out=-1):
        self.kernel, self.out, self.launches = kernel, out, 0

    def __getitem__(self, config):
        def launch(*args):
            self.launches += 1
            self.kernel[config](*args)
            args[self.out][...] += 1

        return launch


class Counting(Corrupt):
    """The real kernel, its launches counted."""

    def __getitem__(self, config):
        def launch(*args):
            self.launches += 1
            self.kernel[config](*args)

        return launch
