"""HTTP routes, one module per concern."""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute


class SummaryRoute(APIRoute):
    """A route whose OpenAPI summary is its docstring's first line (the rest stays the
    description), so each route documents itself in one place."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.summary is None and self.description:
            self.summary = self.description.splitlines()[0]
