"""Import Trivy's ignore inputs as exceptions (spec section 10): an OpenVEX document's not_affected statements, or a
.trivyignore file. Pure: a document in, the exceptions to create out (as app.exceptions.ExceptionBody fields, each
with where it came from), or BadDocument naming the statement or line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    """One exception to create: its fields, and where in the document it came from (`statements[2]`, `line 5`)."""

    where: str
    doc: dict[str, Any]


class BadDocument(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def parse(fmt: str, document: Any, reason: str | None = None, expires_at: str | None = None) -> list[Item]:
    """The exceptions a document asks for; `reason` and `expires_at` are the defaults for what it does not say."""
    raise BadDocument("$", f"importing {fmt} is not built yet")
