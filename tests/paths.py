"""Where the tests find the repo and the third-party data in ../shared (FREMFORGE_SHARED_DIR overrides)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FREMFORGE_SHARED_DIR") or ROOT.parent / "shared")
FIXTURES = SHARED / "fixtures"
