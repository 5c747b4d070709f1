"""Exceptions raised at the boundary, each naming the file and the field at fault."""

from __future__ import annotations


class BrainpipeInputError(ValueError):
    """Raised when an input file or config value is not what a stage expects.

    The message always names the offending file (or config key) and the field,
    the value received and what was expected.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.source}: field '{field}': {problem}")
