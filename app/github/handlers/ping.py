"""ping: GitHub's hello when the webhook is created; nothing to do but answer."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from app.github.router import Context, Router, get

log = logging.getLogger(__name__)
router = Router()


@router.register("ping")
def ping(session: Session, payload: dict[str, Any], ctx: Context) -> str | None:
    # DEBUG: the view logs the delivery's one INFO line (github.webhook.handled ... event=ping).
    log.debug("github.webhook.ping hook=%s app=%s", get(payload, "hook", "id"), get(payload, "hook", "app_id"))
    return None
