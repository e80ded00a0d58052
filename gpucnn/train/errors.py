"""Typed training errors: never retried by the flows."""

from __future__ import annotations


class TrainingError(Exception):
    """Training cannot go on (bad data from a loader, an impossible configuration)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; training stopped and the last "
            "good checkpoint was kept (try a lower learning rate)"
        )


class NonFiniteParametersError(TrainingError):
    """An update left a parameter NaN or infinite; nothing of that epoch is saved."""

    def __init__(self, epoch: int, name: str) -> None:
        self.epoch, self.name = epoch, name
        super().__init__(
            f"parameter {name} became NaN or infinite in epoch {epoch}'s updates; training "
            "stopped before anything of that epoch was saved, and the last good checkpoint "
            "was kept (try a lower learning rate)"
        )


class CheckpointError(Exception):
    """A checkpoint cannot be used: unreadable, hostile, poisoned (non-finite weights), from
    another model, or another format. The message is one line naming the file and the rule
    broken: the CLI prints it as it is, so line breaks (from an exception text or a name taken
    from the file) become spaces."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
