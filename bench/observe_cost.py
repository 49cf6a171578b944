"""The event-loop CPU that observing a request costs: the outermost middleware alone.

    .venv/bin/python -m bench.observe_cost                            # this tree
    PYTHONPATH=/path/to/older/tree .venv/bin/python -m bench.observe_cost   # another

bench/profile measures a whole /encode request (hundreds of µs, which a shared
machine's noise moves by tens); this measures the part that observing adds: the
outermost middleware (app.observe.ObserveMiddleware, or app.metrics.MetricsMiddleware
in trees from before it) around an app that answers at once, as /encode answers
(status, headers, one body), with a request's headers, awaited N times on one event
loop. It reports the CPU time per request, the least of several rounds (noise only
ever adds). Run two trees in turn to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any


async def _rounds(n: int, rounds: int) -> list[float]:
    from app import metrics as old
    from app.metrics import Metrics

    served: Any = None
    if hasattr(old, "MetricsMiddleware"):  # a tree from before app.observe
        Middleware: Any = old.MetricsMiddleware
    else:
        from app.context import served
        from app.observe import ObserveMiddleware as Middleware

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
    }
    body = {"type": "http.response.body", "body": b"x" * 512}

    class Route:
        path = "/encode"

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = Route  # as app.dispatch sets it
        if served is not None:
            served.set(("mnist", "2"))  # as app.deps.leased does
        await send(start)
        await send(body)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    middleware = Middleware(answer, metrics=Metrics())
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"wrk"),
        (b"content-type", b"application/x-npy"),
        (b"content-length", b"912"),
    ]
    results = []
    for _ in range(rounds):
        cpu = time.process_time()
        for _ in range(n):
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/encode",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "http_version": "1.1",
            }
            await middleware(scope, receive, send)
        results.append((time.process_time() - cpu) / n * 1e6)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.observe_cost", description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.WARNING)  # as bench/run.py serves: no access lines
    import app

    per_request = asyncio.run(_rounds(args.n, args.rounds))
    print(
        f"{app.__path__[0]}: {min(per_request):.2f} µs of CPU per request "
        f"(least of {args.rounds} rounds of {args.n}; all: "
        f"{', '.join(f'{r:.2f}' for r in per_request)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
