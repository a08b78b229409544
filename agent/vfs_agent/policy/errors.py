"""Policy problems and the error that carries them. Kept apart from the loader (YAML, pydantic)
so that the CLI's error handling and the generator can name them without importing those."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int  # 1-based; 0 when the problem is about the file as a whole
    column: int
    field: str  # e.g. "mounts[0].path", "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class PolicyError(Exception):
    """One or more problems; nothing may be changed when this is raised."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
