"""Load for the gRPC cells, as wrk is for HTTP: one serialized request, sent over and
over by N concurrent calls on one channel for a few seconds, then one "BENCH {json}"
line in the format of bench/wrk/bench.lua (bench/loadgen.py parses both).

It is Python (grpcio's asyncio client), so it takes more CPU per call than wrk does:
on 2 cores the gRPC cells load the server less hard than the HTTP cells, the same way
for every server it loads.

    python -m bench.grpcload 127.0.0.1:8111 request.bin --concurrency 32 --seconds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def load(target: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = {"status_errors": 0, "timeouts": 0}
    received = 0
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # No serializers: the request is bytes already, the answer stays bytes.
        call = channel.unary_unary(METHOD)
        await channel.channel_ready()
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal received
            while (sent := time.perf_counter()) < deadline:
                try:
                    answer = await call(body, timeout=10)
                    received += len(answer)
                except grpc.aio.AioRpcError as error:
                    late = error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                    errors["timeouts" if late else "status_errors"] += 1
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - started
    us = np.asarray(latencies) * 1e6 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        "bytes": received,
        "connect_errors": 0,
        "read_errors": 0,
        "write_errors": 0,
        **errors,
        "mean_us": float(us.mean()),
        "p50_us": int(np.percentile(us, 50)),
        "p95_us": int(np.percentile(us, 95)),
        "p99_us": int(np.percentile(us, 99)),
        "max_us": int(us.max()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grpcload", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port")
    parser.add_argument("body", type=Path, help="a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    found = asyncio.run(load(args.target, args.body.read_bytes(), args.concurrency, args.seconds))
    print("BENCH " + json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
