"""The admin pages of Admin → Code security → Image scanning."""

from __future__ import annotations

from app.admin.blueprint import bp  # noqa: F401
