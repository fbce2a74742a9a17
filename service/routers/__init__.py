"""One router per concern; :func:`service.app.create_app` includes every router of ``ROUTERS``.
Adding an endpoint means adding (or extending) one module here."""

from __future__ import annotations

from service.routers import candidates, events, ops, score

ROUTERS = (candidates.router, score.router, events.router, ops.router)
