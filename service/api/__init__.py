"""The HTTP API: a Flask application factory and the commands that serve it.

`create_app` is imported lazily: `deficiency serve` imports this package in the
server's master, which must not import prometheus_client before it has set up
multiprocess metrics for the workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
