"""KServe's own REST client (the `kserve` package) against a v2 server: run by
tests/test_oip_kserve.py in a process of its own, because `kserve` and tritonclient's
gRPC module each register protobuf messages of the `inference` package, which one
process can hold once.

    python tests/oip_kserve_client.py BASE_URL IMAGES.npy   -> one JSON object on stdout
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def run(base: str, images: np.ndarray) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
        found["live"] = await client.is_server_live(base)
        found["ready"] = await client.is_server_ready(base)
        found["encoder_ready"] = await client.is_model_ready(base, "mnist-encoder")
        found["unknown_ready"] = await client.is_model_ready(base, "nothing-encoder")
        for binary in (True, False):
            x = InferInput("x", list(images.shape), "UINT8")
            x.set_data_from_numpy(images, binary_data=binary)
            outputs = [RequestedOutput("mean", {"binary_data": binary})]
            request = InferRequest("mnist-encoder", [x], request_outputs=outputs)
            answer = await client.infer(base, request, model_name="mnist-encoder")
            found[f"mean_{'binary' if binary else 'json'}"] = answer.outputs[0].as_numpy().tolist()
        x = InferInput("x", list(images.shape), "UINT8")
        x.set_data_from_numpy(images, binary_data=True)
        request = InferRequest("mnist-elbo", [x], parameters={"k": 4, "seed": 2})
        answer = await client.infer(base, request, model_name="mnist-elbo")
        found["elbo"] = {o.name: o.as_numpy().tolist() for o in answer.outputs}
        found["elbo_parameters"] = answer.parameters
        bad = InferInput("x", [1, 1, 28, 28], "FP64")
        bad.set_data_from_numpy(np.zeros((1, 1, 28, 28)), binary_data=True)
        request = InferRequest("mnist-encoder", [bad])
        try:
            await client.infer(base, request, model_name="mnist-encoder")
        except httpx.HTTPStatusError as error:
            found["error"] = {"status": error.response.status_code, "message": str(error)}
    return found


def main() -> None:
    base, images = sys.argv[1], np.load(sys.argv[2])
    print(json.dumps(asyncio.run(run(base, images))))


if __name__ == "__main__":
    main()
