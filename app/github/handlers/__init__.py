"""The webhook handlers, one module per event family, composed into the one router the view dispatches on."""

from __future__ import annotations

from app.github.handlers import check_run, installation, installation_repositories, ping, pull_request
from app.github.router import Router

router = Router(
    installation.router,
    installation_repositories.router,
    pull_request.router,
    check_run.router,
    ping.router,
)
