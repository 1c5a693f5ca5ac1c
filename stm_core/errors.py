"""Errors that carry what a user needs to fix their input: the file and the problem."""

from __future__ import annotations

from pathlib import Path


class STMLabelError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(STMLabelError, ValueError):
    """Bad user input: a missing folder, a corrupt image, a mask of the wrong size, ...

    ``source`` names the file or folder (or a frame index) so messages always say where.
    """

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str | None, str]]:
        # The default reduction calls the class with ``self.args`` (the one formatted message),
        # which this two-argument constructor cannot take: without this, an InputError raised on
        # a Ray worker reaches the driver as an UnserializableException that has lost its type.
        return type(self), (self.source, self.problem)


class CheckpointError(STMLabelError, ValueError):
    """A checkpoint that cannot be read or does not fit the network."""
