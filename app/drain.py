"""Graceful drain: what the service does between SIGTERM and its exit.

An orchestrator stops sending traffic to a replica some time after it asks the
replica to stop: Kubernetes removes the pod from its endpoints while it sends
SIGTERM, and proxies learn of it later still. A server that closes its socket at
once refuses the requests still routed to it (triton #6230, TorchServe #2008). So
on SIGTERM the service

1. answers /readyz with 503 "draining" at once,
2. keeps serving for `drain_s` seconds, while load balancers notice,
3. then shuts down as uvicorn does: stops accepting, lets the requests in flight
   finish (at most `shutdown_grace_s` seconds), stops the batchers and exits 0.
   The gRPC service stops accepting at the same moment (`on_shutdown`) and gives
   its calls the same grace alongside, so the whole takes drain_s + shutdown_grace_s.

SIGINT (Ctrl-C at a terminal) skips the drain, and a second signal during the
drain ends it early; after that uvicorn's own rules hold (another Ctrl-C forces
the exit).
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain window before its graceful shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain_s: float,
        on_drain: Callable[[], None],
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.on_drain = on_drain  # flips readiness; called in the signal handler
        self.on_shutdown = on_shutdown  # called as the socket closes, on the event loop
        self.drain_until: float | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags (no logging, no loop calls); on_tick,
        # which uvicorn's main loop runs every 0.1 s, ends the window.
        first_term = sig == signal.SIGTERM and self.drain_until is None and not self.should_exit
        if first_term and self.drain_s > 0:
            self.drain_until = time.monotonic() + self.drain_s
            self.on_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if (
            self.drain_until is not None
            and not self.should_exit
            and time.monotonic() >= self.drain_until
        ):
            log.info("drained for %s s after SIGTERM; shutting down", self.drain_s)
            super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)
