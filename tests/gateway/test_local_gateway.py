"""The local backend over a real gRPC server: images, variants, health, reflection, bad inputs, overload, deadlines."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from edgediff.constants import (
    METRIC_GATEWAY_IMAGES_TOTAL,
    METRIC_GATEWAY_IN_FLIGHT,
    METRIC_GATEWAY_QUEUE_DEPTH,
    METRIC_GATEWAY_REQUEST_SECONDS,
    METRIC_GATEWAY_REQUESTS_TOTAL,
    METRIC_GATEWAY_STAGE_SECONDS,
)
from edgediff.variants import all_variants
from services.gateway.client import GeneratorClient
from tests.gateway.conftest import MAX_BATCH, scrape

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _requests(port: int, method: str, code: str) -> float:
    labels = (("code", code), ("method", method))
    return scrape(port).get((METRIC_GATEWAY_REQUESTS_TOTAL, labels), 0.0)


@pytest.mark.slow
def test_generate_equals_edgediff_generate(local_client: GeneratorClient, tmp_path: Path) -> None:
    # eta 0.3 is not a float32 number: the gateway must run the eta the client meant, as the CLI does.
    out = tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "cli.main", "generate", "--model", "tiny", "--steps", "6", "--seed", "7",
           "--eta", "0.3", "--batch", "2", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    response = local_client.generate(seed=7, steps=6, eta=0.3, batch_size=2, variant="torch-fp32")
    assert len(response.images) == 2
    assert response.images[0] == out.read_bytes()
    assert response.images[1] == (tmp_path / "cli-1.png").read_bytes()
    assert response.images[0].startswith(PNG_MAGIC)
    assert (response.seed, response.steps, response.variant, response.model) == (7, 6, "torch-fp32", "tiny")
    assert response.weights_origin.startswith("synthetic weights for tiny (seed 0, sha256 ")  # no server path
    t = response.timings
    assert t.denoise_ms > 0 and t.decode_ms > 0 and t.queue_ms >= 0
    assert t.total_ms >= t.denoise_ms + t.decode_ms


def test_defaults_are_applied(local_client: GeneratorClient) -> None:
    response = local_client.generate(seed=3, steps=1, format="")
    assert (response.steps, response.variant, len(response.images)) == (1, "torch-fp32", 1)
    response = local_client.generate(seed=3, steps=0, batch_size=0, variant="", format="PNG", timeout_s=60)
    assert response.steps == 20 and len(response.images) == 1


def test_list_variants_health_and_reflection(local_gateway, local_client: GeneratorClient) -> None:
    listing = local_client.list_variants()
    assert listing.backend == "local" and listing.model == "tiny"
    rows = {v.name: v for v in listing.variants}
    assert set(rows) == {v.name for v in all_variants()}
    assert rows["torch-fp32"].available and rows["torch-fp32"].is_default
    assert [v.name for v in listing.variants if v.is_default] == ["torch-fp32"]
    for variant in all_variants():  # the server builds only its default variant (no --allow-variants)
        avail, allowed = variant.availability(), variant.name == "torch-fp32"
        assert rows[variant.name].available == (avail.ok and allowed)
        if avail.ok and not allowed:
            assert "--allow-variants" in rows[variant.name].reason
        else:
            assert rows[variant.name].reason == avail.reason
        assert rows[variant.name].backend == variant.backend
    assert local_client.health() == "SERVING"
    assert local_client.health("edgediff.v1.Generator") == "SERVING"

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(local_gateway.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"edgediff.v1.Generator", "grpc.health.v1.Health"} <= services


def _unavailable_variant() -> tuple[str, str] | None:
    for variant in all_variants():
        avail = variant.availability()
        if not avail.ok:
            return variant.name, avail.reason
    return None


BAD_INPUTS = [
    # (request fields, status code, words the message must contain)
    ({"steps": 1001}, "INVALID_ARGUMENT", ["steps", "1..1000", "1001"]),
    ({"steps": 2**32 - 1}, "INVALID_ARGUMENT", ["steps", "1..1000"]),
    ({"eta": -0.5}, "INVALID_ARGUMENT", ["eta", "0..1", "-0.5"]),
    ({"eta": 1.5}, "INVALID_ARGUMENT", ["eta", "0..1", "1.5"]),
    ({"eta": math.nan}, "INVALID_ARGUMENT", ["eta", "0..1", "nan"]),
    ({"eta": math.inf}, "INVALID_ARGUMENT", ["eta", "0..1", "inf"]),
    ({"batch_size": MAX_BATCH + 1}, "INVALID_ARGUMENT", ["batch_size", f"1..{MAX_BATCH}", str(MAX_BATCH + 1)]),
    ({"batch_size": 100000}, "INVALID_ARGUMENT", ["batch_size", f"1..{MAX_BATCH}"]),
    ({"seed": 2**63}, "INVALID_ARGUMENT", ["seed", "0..2^63-1"]),
    ({"seed": 2**64 - 1}, "INVALID_ARGUMENT", ["seed", "0..2^63-1"]),
    ({"format": "jpeg"}, "INVALID_ARGUMENT", ["format", "png", "jpeg"]),
    ({"variant": "no-such-variant"}, "INVALID_ARGUMENT", ["variant", "no-such-variant", "torch-fp32"]),
    ({"variant": "x" * 5000}, "INVALID_ARGUMENT", ["variant", "...", "at most 64 characters", "5000"]),
]


def test_bad_inputs_table_then_a_good_request(local_gateway, local_client: GeneratorClient) -> None:
    port = local_gateway.metrics_port
    invalid_before = _requests(port, "Generate", "INVALID_ARGUMENT")
    cases = list(BAD_INPUTS)
    unavailable = _unavailable_variant()
    if unavailable is not None:
        name, reason = unavailable
        cases.append(({"variant": name}, "FAILED_PRECONDITION", [name, "unavailable", reason]))
    assert len(cases) >= 10
    for fields, code, words in cases:
        with pytest.raises(grpc.RpcError) as info:
            local_client.generate(**{"steps": 1, **fields})
        assert info.value.code().name == code, (fields, info.value.details())
        for word in words:
            assert word in info.value.details(), (fields, info.value.details())
        assert len(info.value.details()) < 400, "messages stay short even for huge inputs"
    n_invalid = sum(code == "INVALID_ARGUMENT" for _, code, _ in cases)
    assert _requests(port, "Generate", "INVALID_ARGUMENT") - invalid_before == n_invalid
    response = local_client.generate(seed=11, steps=2, batch_size=MAX_BATCH)
    assert len(response.images) == MAX_BATCH and all(img.startswith(PNG_MAGIC) for img in response.images)


@pytest.mark.slow
def test_overload_answers_every_request(local_gateway) -> None:
    # concurrency 1 + queue 1; six simultaneous long requests: the first runs, one waits, the rest are refused.
    port = local_gateway.metrics_port
    before = {code: _requests(port, "Generate", code) for code in ("OK", "RESOURCE_EXHAUSTED")}
    n = 6
    barrier = threading.Barrier(n)
    answers: list[tuple[str, float | None, float]] = []
    lock = threading.Lock()

    def call(seed: int) -> None:
        with GeneratorClient(local_gateway.target, timeout_s=120) as client:
            client.health()  # connect before the barrier so that all requests leave together
            barrier.wait(timeout=30)
            t0 = time.perf_counter()
            try:
                response = client.generate(seed=seed, steps=150)
                answer = ("OK", response.timings.queue_ms, time.perf_counter() - t0)
            except grpc.RpcError as exc:
                answer = (exc.code().name, None, time.perf_counter() - t0)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert len(answers) == n, "every request got an answer"
    codes = [code for code, _, _ in answers]
    ok, exhausted = codes.count("OK"), codes.count("RESOURCE_EXHAUSTED")
    assert ok + exhausted == n, codes
    assert exhausted >= 1 and ok >= 2, codes
    assert max(q for code, q, _ in answers if code == "OK") > 0, "the queued request waited for the slot"
    ok_wall = min(s for code, _, s in answers if code == "OK")
    assert all(s < ok_wall for code, _, s in answers if code == "RESOURCE_EXHAUSTED"), "refusals come at once"
    after = scrape(port)
    assert after[(METRIC_GATEWAY_REQUESTS_TOTAL, (("code", "OK"), ("method", "Generate")))] - before["OK"] == ok
    refused = after[(METRIC_GATEWAY_REQUESTS_TOTAL, (("code", "RESOURCE_EXHAUSTED"), ("method", "Generate")))]
    assert refused - before["RESOURCE_EXHAUSTED"] == exhausted
    assert after[(METRIC_GATEWAY_IN_FLIGHT, ())] == 0 and after[(METRIC_GATEWAY_QUEUE_DEPTH, ())] == 0


def test_deadline_cancels_the_work(local_gateway, local_client: GeneratorClient) -> None:
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        local_client.generate(steps=1000, timeout_s=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - t0 < 5
    # 1000 steps take many seconds; the slot is free again almost at once only if the generation was cancelled.
    t1 = time.perf_counter()
    assert len(local_client.generate(steps=1, timeout_s=10).images) == 1
    assert time.perf_counter() - t1 < 8
    deadline = time.monotonic() + 5
    while scrape(local_gateway.metrics_port)[(METRIC_GATEWAY_IN_FLIGHT, ())] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(local_gateway.metrics_port)[(METRIC_GATEWAY_IN_FLIGHT, ())] == 0


def test_metrics_endpoint(local_gateway, local_client: GeneratorClient) -> None:
    local_client.generate(seed=5, steps=2, batch_size=2)
    local_client.list_variants()
    samples = scrape(local_gateway.metrics_port)
    names = {name for name, _ in samples}
    assert {METRIC_GATEWAY_IN_FLIGHT, METRIC_GATEWAY_QUEUE_DEPTH, METRIC_GATEWAY_REQUESTS_TOTAL,
            METRIC_GATEWAY_REQUEST_SECONDS + "_bucket", METRIC_GATEWAY_STAGE_SECONDS + "_count",
            METRIC_GATEWAY_IMAGES_TOTAL} <= names
    assert samples[(METRIC_GATEWAY_REQUESTS_TOTAL, (("code", "OK"), ("method", "ListVariants")))] >= 1
    assert samples[(METRIC_GATEWAY_IMAGES_TOTAL, (("variant", "torch-fp32"),))] >= 2
    for stage in ("queue", "denoise", "decode", "total"):
        assert samples[(METRIC_GATEWAY_STAGE_SECONDS + "_count", (("stage", stage), ("variant", "torch-fp32")))] >= 1
    count = samples[(METRIC_GATEWAY_REQUEST_SECONDS + "_count", (("method", "Generate"),))]
    assert count == sum(v for (name, labels), v in samples.items()
                        if name == METRIC_GATEWAY_REQUESTS_TOTAL and ("method", "Generate") in labels)


def test_binds_loopback_and_names_the_busy_port() -> None:
    import socket

    from edgediff.errors import InvalidArgumentError
    from services.gateway.server import GatewayConfig, GatewayServer

    assert GatewayConfig(backend="local").host == "127.0.0.1"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for fields, flag in (({"port": port, "metrics_port": 0}, "--port"), ({"port": 0, "metrics_port": port},
                                                                            "--metrics-port")):
            server = GatewayServer(GatewayConfig(backend="local", model="tiny", preload=False, **fields))
            with pytest.raises(InvalidArgumentError, match=f"{flag}: cannot bind 127.0.0.1:{port}"):
                server.start()
