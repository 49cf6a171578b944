"""HTTP routes, one module per concern."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.dependencies.utils import get_dependant, get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from app.schemas import ErrorDetail

INVALID_PARAMETERS = {
    "model": ErrorDetail,
    "description": "Invalid parameters: `detail` says which and why, `errors` lists each.",
}


class SummaryRoute(APIRoute):
    """A route whose OpenAPI summary is its docstring's first line (the rest stays the
    description), so each route documents itself in one place. Its 422 is documented
    in the service's error shape (app/errors.py), not FastAPI's list."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        responses = dict(kwargs.pop("responses", None) or {})
        if 422 not in responses and get_flat_params(get_dependant(path=path, call=endpoint)):
            responses[422] = INVALID_PARAMETERS
        super().__init__(path, endpoint, responses=responses, **kwargs)
        if self.summary is None and self.description:
            self.summary = self.description.splitlines()[0]


class QueryRoute(SummaryRoute):
    """A route for the model-bound endpoints, which take the request and query
    parameters only and read their bodies themselves.

    FastAPI documents the endpoint from its signature as usual, but each request
    is validated with one pydantic model built from that signature instead of
    FastAPI's dependency solver, which walks every parameter's annotation again
    per request: on one-image /encode calls that machinery took more event-loop
    time than the batched model call (bench/profile.md). Errors are FastAPI's
    RequestValidationError, with `loc` ["query", name], which app/errors.py words
    like every other error; tests/test_app_routes.py holds the two to the same
    answers.
    """

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        self.query_model = _query_model(endpoint)  # the parent's __init__ builds the handler
        super().__init__(path, endpoint, **kwargs)
        # Starlette's request/response wrapper: FastAPI's own adds two exit stacks per
        # request for dependencies with `yield`, which these endpoints cannot have.
        # It serves when the route sits on the app's router, not an included one.
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, query_model = self.endpoint, self.query_model

        async def handle(request: Request) -> Response:
            # A plain dict: pydantic reads a Mapping such as QueryParams key by key
            # through Mapping.get, which raises and catches a KeyError per absent
            # parameter (bench/profile.md).
            raw = request.scope["query_string"]
            try:
                query = query_model.model_validate(dict(request.query_params) if raw else {})
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                raise RequestValidationError(
                    [{**error, "loc": ("query", *error["loc"])} for error in errors]
                ) from None
            response: Response = await endpoint(request, **query.__dict__)
            return response

        return handle


def _query_model(endpoint: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model of the endpoint's query parameters (all but the first, `request`)."""
    hints = typing.get_type_hints(endpoint, include_extras=True)
    parameters = list(inspect.signature(endpoint).parameters.values())
    if not parameters or hints.get(parameters[0].name) is not Request:
        raise TypeError(f"{endpoint.__name__}: the first parameter must be the Request")
    fields: dict[str, Any] = {}
    for parameter in parameters[1:]:
        hint = hints[parameter.name]
        extras = getattr(hint, "__metadata__", ())
        if parameter.default is inspect.Parameter.empty or any(
            isinstance(extra, Depends) for extra in extras
        ):
            raise TypeError(
                f"{endpoint.__name__}: {parameter.name} must be a query parameter with a default"
            )
        fields[parameter.name] = (hint, parameter.default)
    return create_model(f"{endpoint.__name__}_query", **fields)
