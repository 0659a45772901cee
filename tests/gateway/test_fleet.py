"""The fleet router (``edgediff serve --backend fleet``): policies, learned cost, failover, merged ListVariants.

Upstreams are real gateways on loopback over ``FlakyBackend`` (a backend whose generations take ``work_s``), so the
router's routing, failover and metrics run for real over gRPC without a model.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from edgediff.constants import (
    FLEET_METRIC_LABELS,
    METRIC_FLEET_REQUESTS_TOTAL,
    METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES,
    METRIC_FLEET_UPSTREAM_UP,
)
from edgediff.errors import InvalidArgumentError
from services.gateway.backends.base import VariantStatus
from services.gateway.backends.fleet import (
    FleetBackend,
    Upstream,
    UpstreamSpec,
    _scrape,
    order_candidates,
    parse_upstream,
    resolve,
)
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer, make_backend
from tests.gateway.conftest import free_port, scrape
from tests.gateway.fakes import VARIANT, FlakyBackend


def test_parse_upstream_defaults_and_options() -> None:
    spec = parse_upstream("10.0.0.7:50051")
    assert spec == UpstreamSpec(address="10.0.0.7:50051", metrics_url="http://10.0.0.7:9401/metrics",
                                exporter_url="http://10.0.0.7:9400/metrics")
    spec = parse_upstream("dns:gw.example:5000;metrics=http://m:1/metrics;exporter=none;name=jetson")
    assert (spec.dns, spec.address, spec.metrics_url, spec.exporter_url, spec.name) == (
        True, "gw.example:5000", "http://m:1/metrics", None, "jetson")
    spec = parse_upstream("[::1]:50051")  # an IPv6 literal keeps its brackets
    assert (spec.address, spec.metrics_url) == ("[::1]:50051", "http://[::1]:9401/metrics")


@pytest.mark.parametrize("text, fragment", [
    ("nohost", "HOST:PORT"), ("h:0", "HOST:PORT"), ("h:99999", "HOST:PORT"), ("h:1;color=red", "options are"),
    ("h:1;metrics=ftp://x", "http(s) URL"),
])
def test_parse_upstream_refuses_bad_values(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"--upstream") as info:
        parse_upstream(text)
    assert fragment in str(info.value)


def test_dns_upstream_becomes_one_per_address() -> None:
    resolved = resolve(parse_upstream("dns:localhost:50051;name=edge"))
    assert resolved and all(r.address.endswith(":50051") and r.name.startswith("edge/") for r in resolved)
    assert any(r.address == "127.0.0.1:50051" and r.metrics_url == "http://127.0.0.1:9401/metrics" for r in resolved)


def _upstream(name: str, order: int, *, latency: float | None, energy: float | None, load: float = 0.0,
              healthy: bool = True, variants: tuple[str, ...] = (VARIANT,)) -> Upstream:
    upstream = Upstream(spec=UpstreamSpec(address=f"{name}:1", name=name), client=None, order=order,  # type: ignore[arg-type]
                        healthy=healthy, default_variant=variants[0],
                        variants={v: VariantStatus(name=v, available=True) for v in variants})
    if latency is not None:
        upstream.latency_s[VARIANT] = latency
    upstream.energy_per_image_j = energy
    upstream.remote_load = load
    return upstream


def _names(upstreams: list[Upstream]) -> list[str]:
    return [u.name for u in upstreams]


def test_policies_order_the_upstreams() -> None:
    gpu = _upstream("gpu", 2, latency=0.5, energy=40.0)
    jetson = _upstream("jetson", 1, latency=4.0, energy=12.0)
    phone = _upstream("phone", 0, latency=30.0, energy=None)  # no power sensor: energy unknown
    down = _upstream("down", 3, latency=0.1, energy=1.0, healthy=False)
    fleet = [gpu, jetson, phone, down]
    assert _names(order_candidates(fleet, "fastest", VARIANT, 1, 60.0)) == ["gpu", "jetson", "phone"]
    assert _names(order_candidates(fleet, "lowest-energy", VARIANT, 1, 60.0)) == ["jetson", "gpu", "phone"]
    # edge-first: the cheapest (measured energy, then list order) that meets the latency budget, then the fastest
    assert _names(order_candidates(fleet, "edge-first", VARIANT, 1, 10.0)) == ["jetson", "gpu", "phone"]
    assert _names(order_candidates(fleet, "edge-first", VARIANT, 1, 1.0)) == ["gpu", "jetson", "phone"]
    jetson.remote_load = 3  # four images ahead there now: 16 s predicted
    assert _names(order_candidates(fleet, "edge-first", VARIANT, 1, 10.0)) == ["gpu", "jetson", "phone"]
    assert order_candidates(fleet, "fastest", "onnx-fp32", 1, 60.0) == []  # nobody runs it
    with pytest.raises(InvalidArgumentError, match="--policy"):
        order_candidates(fleet, "cheapest", VARIANT, 1, 60.0)


def test_unknown_latency_is_tried_first() -> None:
    known = _upstream("known", 0, latency=1.0, energy=None)
    new = _upstream("new", 1, latency=None, energy=None)
    assert _names(order_candidates([known, new], "fastest", VARIANT, 1, 60.0)) == ["new", "known"]


class _Upstreams:
    """Gateways over fake backends of different speeds, stopped at the end."""

    def __init__(self) -> None:
        self.servers: list[GatewayServer] = []
        self.backends: list[FlakyBackend] = []

    def start(self, work_s: float, *, max_concurrency: int = 1, max_queue: int = 8) -> GatewayServer:
        backend = FlakyBackend(work_s=work_s)
        config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=free_port(),
                               max_concurrency=max_concurrency, max_queue=max_queue, shutdown_grace_s=1.0,
                               max_backend_wait_s=0.0)
        server = GatewayServer(config, backend=backend).start()
        self.servers.append(server)
        self.backends.append(backend)
        return server

    def spec(self, server: GatewayServer, name: str) -> str:
        return f"{server.target};metrics=http://127.0.0.1:{server.metrics_port}/metrics;exporter=none;name={name}"

    def stop(self) -> None:
        for server in self.servers:
            server.stop(grace_s=0.5)


@pytest.fixture
def upstreams() -> Iterator[_Upstreams]:
    fleet = _Upstreams()
    try:
        yield fleet
    finally:
        fleet.stop()


def _router(upstreams: list[str], policy: str, refresh_s: float = 0.2) -> GatewayServer:
    config = GatewayConfig(backend="fleet", port=0, metrics_port=free_port(), max_concurrency=8, max_queue=8,
                           shutdown_grace_s=1.0, upstreams=upstreams, policy=policy, fleet_refresh_s=refresh_s,
                           max_backend_wait_s=5.0)
    return GatewayServer(config).start()


def test_router_learns_the_fastest_and_merges_variants(upstreams: _Upstreams) -> None:
    fast, medium, slow = upstreams.start(0.02), upstreams.start(0.15), upstreams.start(0.4)
    router = _router([upstreams.spec(slow, "slow"), upstreams.spec(medium, "medium"), upstreams.spec(fast, "fast")],
                     "fastest")
    try:
        with GeneratorClient(router.target, timeout_s=30.0) as client:
            listing = client.list_variants()
            assert listing.backend == "fleet" and listing.model == "tiny"
            row = next(v for v in listing.variants if v.name == VARIANT)
            assert row.available and sorted(row.upstreams) == ["fast", "medium", "slow"]
            served = [client.generate(seed=seed, steps=2, variant=VARIANT).upstream for seed in range(12)]
            unnamed = client.generate(seed=99, steps=2)  # no variant: the chosen upstream's own default
            assert (unnamed.variant, unnamed.upstream) == (VARIANT, "fast")
            assert not any(v.is_default for v in listing.variants)  # the router has no default of its own
        assert set(served[:3]) == {"fast", "medium", "slow"}  # each is tried once while its cost is unknown
        assert served[3:] == ["fast"] * 9  # then sequential requests go to the fastest
        samples = scrape(router.metrics_port)
        key = (METRIC_FLEET_REQUESTS_TOTAL, (("outcome", "ok"), ("upstream", "fast")))
        assert samples[key] == 11  # 9 + its first try + the request that named no variant
        assert samples[(METRIC_FLEET_UPSTREAM_UP, (("upstream", "slow"),))] == 1.0
        names = {name for name, _labels in samples}
        assert set(FLEET_METRIC_LABELS) - {METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES} <= names
    finally:
        router.stop(grace_s=0.5)


def test_a_dead_upstream_loses_no_request(upstreams: _Upstreams) -> None:
    first, second = upstreams.start(0.02), upstreams.start(0.1)
    router = _router([upstreams.spec(first, "first"), upstreams.spec(second, "second")], "edge-first",
                     refresh_s=60.0)  # the router will not notice by itself: the request finds out
    try:
        with GeneratorClient(router.target, timeout_s=30.0) as client:
            assert client.generate(seed=1, steps=2, variant=VARIANT).upstream == "first"
            first.stop(grace_s=0.1)
            answers = [client.generate(seed=seed, steps=2, variant=VARIANT) for seed in range(2, 6)]
        assert [a.upstream for a in answers] == ["second"] * 4
        samples = scrape(router.metrics_port)
        assert samples[(METRIC_FLEET_REQUESTS_TOTAL, (("outcome", "failed_over"), ("upstream", "first")))] == 1
        assert samples[(METRIC_FLEET_UPSTREAM_UP, (("upstream", "first"),))] == 0.0
    finally:
        router.stop(grace_s=0.5)


def test_a_full_queue_spills_to_the_next_upstream(upstreams: _Upstreams) -> None:
    small = upstreams.start(1.0, max_concurrency=1, max_queue=0)  # one at a time, no queue
    other = upstreams.start(0.3)
    router = _router([upstreams.spec(small, "small"), upstreams.spec(other, "other")], "fastest", refresh_s=60.0)
    try:
        def call(seed: int) -> str:
            with GeneratorClient(router.target, timeout_s=30.0) as client:
                return client.generate(seed=seed, steps=2, variant=VARIANT).upstream

        with ThreadPoolExecutor(2) as pool:
            served = sorted(pool.map(call, (1, 2)))
        assert served == ["other", "small"]
        samples = scrape(router.metrics_port)
        assert samples[(METRIC_FLEET_REQUESTS_TOTAL, (("outcome", "failed_over"), ("upstream", "small")))] == 1
    finally:
        router.stop(grace_s=0.5)


def test_no_serving_upstream_is_unavailable_and_bad_input_is_named(upstreams: _Upstreams) -> None:
    only = upstreams.start(0.02)
    router = _router([upstreams.spec(only, "only")], "fastest")
    try:
        with GeneratorClient(router.target, timeout_s=30.0) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.generate(seed=1, steps=2, variant="no-such-variant")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            upstreams.backends[0].set_up(False)  # its backend down: the upstream answers NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                client.generate(seed=1, steps=2, variant=VARIANT, timeout_s=3.0)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        router.stop(grace_s=0.5)


def test_settings_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one --upstream"):
        GatewayConfig(backend="fleet").check()
    with pytest.raises(InvalidArgumentError, match="--upstream is for --backend fleet"):
        GatewayConfig(backend="local", upstreams=["h:1"]).check()
    with pytest.raises(InvalidArgumentError, match="--fleet-refresh"):
        GatewayConfig(backend="fleet", upstreams=["h:1"], fleet_refresh_s=0).check()
    with pytest.raises(InvalidArgumentError, match="--upstream: expected HOST:PORT"):
        GatewayConfig(backend="fleet", upstreams=["h:1", "h"]).check()
    with pytest.raises(InvalidArgumentError, match="--policy must be one of fastest, lowest-energy, edge-first"):
        GatewayConfig(backend="fleet", upstreams=["h:1"], policy="cheapest").check()
    with pytest.raises(InvalidArgumentError, match="--latency-target must be > 0"):
        GatewayConfig(backend="fleet", upstreams=["h:1"], latency_target_s=0).check()
    config = GatewayConfig(backend="fleet", upstreams=["h:1;name=edge", "dns:g:2;exporter=none"])
    config.check()  # the one place the settings are parsed: the backend is built from what it kept
    assert config.upstream_specs == [parse_upstream("h:1;name=edge"), parse_upstream("dns:g:2;exporter=none")]
    backend = make_backend(config)
    assert isinstance(backend, FleetBackend) and backend.specs == config.upstream_specs


class _Counters(http.server.BaseHTTPRequestHandler):
    """Serves a Prometheus text page the test rewrites between scrapes."""

    page = ""

    def do_GET(self) -> None:
        body = type(self).page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _FakeUpstream:
    """An upstream's exporter and gateway metrics pages, served over HTTP, with the fleet backend learning from them."""

    def __init__(self, name: str) -> None:
        self.exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Exporter", (_Counters,), {}))
        self.gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Gateway", (_Counters,), {}))
        for server in (self.exporter, self.gateway):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.spec = UpstreamSpec(address="127.0.0.1:1",
                                 metrics_url=f"http://127.0.0.1:{self.gateway.server_port}/metrics",
                                 exporter_url=f"http://127.0.0.1:{self.exporter.server_port}/metrics", name=name)
        self.backend = FleetBackend([self.spec], policy="lowest-energy")
        self.upstream = Upstream(spec=self.spec, client=None, order=0)  # type: ignore[arg-type]

    def pages(self, exporter: str, gateway: str) -> None:
        self.exporter.RequestHandlerClass.page = exporter  # type: ignore[attr-defined]
        self.gateway.RequestHandlerClass.page = gateway  # type: ignore[attr-defined]

    def learn(self) -> float | None:
        self.backend._learn_energy(self.upstream, _scrape(self.spec.metrics_url))
        return self.upstream.energy_per_image_j

    def close(self) -> None:
        self.exporter.shutdown()
        self.gateway.shutdown()


@pytest.fixture
def fake_upstream() -> Iterator[_FakeUpstream]:
    fake = _FakeUpstream("board")
    try:
        yield fake
    finally:
        fake.close()


def test_energy_per_image_comes_from_the_upstreams_counters(fake_upstream: _FakeUpstream) -> None:
    def pages(joules_board: float, joules_rail: float, images: float) -> None:
        fake_upstream.pages(
            f'edgediff_energy_joules_total{{domain="soc-total",source="tegrastats"}} {joules_board}\n'
            f'edgediff_energy_joules_total{{domain="gpu",source="tegrastats"}} {joules_rail}\n',
            f'edgediff_gateway_images_total{{variant="torch-fp32"}} {images}\n')

    pages(1000.0, 400.0, 10)
    assert fake_upstream.learn() is None  # one reading is no rate
    pages(1100.0, 450.0, 14)
    # 100 J of the Jetson's input rail over 4 images: its GPU rail is a part of it, never added (the bench's rule)
    assert fake_upstream.learn() == pytest.approx(25.0)
    fake_upstream.pages("", 'edgediff_gateway_images_total{variant="torch-fp32"} 14\n')  # the sensor went away
    assert fake_upstream.learn() == pytest.approx(25.0)  # kept, never invented


def test_energy_sums_the_whole_domains_net_of_idle(fake_upstream: _FakeUpstream) -> None:
    # A desktop: RAPL package (its core zone is a part of it), DRAM and an NVML GPU are three wholes; the fleet used
    # to take the largest one only. With an idle baseline on every whole, the net energy is learned.
    def pages(package: float, core: float, dram: float, gpu: float, images: float, idle_w: float | None) -> None:
        idle = "".join(f'edgediff_idle_power_watts{{domain="{d}",source="{s}"}} {idle_w}\n'
                       for d, s in (("cpu-package", "rapl"), ("dram", "rapl"), ("gpu", "nvml"))) if idle_w else ""
        fake_upstream.pages(
            f'edgediff_energy_joules_total{{domain="cpu-package",source="rapl"}} {package}\n'
            f'edgediff_energy_joules_total{{domain="cpu-core",source="rapl"}} {core}\n'
            f'edgediff_energy_joules_total{{domain="dram",source="rapl"}} {dram}\n'
            f'edgediff_energy_joules_total{{domain="gpu",source="nvml"}} {gpu}\n' + idle,
            f'edgediff_gateway_images_total{{variant="v"}} {images}\n')

    pages(0.0, 0.0, 0.0, 0.0, 0, None)
    fake_upstream.learn()
    pages(60.0, 50.0, 10.0, 130.0, 10, None)
    assert fake_upstream.learn() == pytest.approx(20.0)  # (60 + 10 + 130) J / 10 images; the core zone not added
    fake_upstream.upstream.energy_per_image_j = None
    pages(120.0, 100.0, 20.0, 260.0, 20, 1e6)  # an absurd idle power: the net is far below the gross
    net = fake_upstream.learn()
    assert net is not None and net < 20.0


def test_energy_is_not_learned_over_an_interval_the_exporter_did_not_measure(fake_upstream: _FakeUpstream) -> None:
    # A phone put on its charger: its exporter stops integrating (the battery's drain is not the phone's draw) and
    # counts the seconds; the counter's small increase over that interval must not make the phone look cheap.
    def pages(joules: float, charging_s: float, images: float) -> None:
        fake_upstream.pages(
            f'edgediff_energy_joules_total{{domain="battery",source="android-battery"}} {joules}\n'
            'edgediff_energy_unmeasured_seconds_total{domain="battery",source="android-battery",'
            f'flag="charging"}} {charging_s}\n',
            f'edgediff_gateway_images_total{{variant="v"}} {images}\n')

    for joules, charging_s, images in ((0.0, 0.0, 0), (1000.0, 0.0, 2), (1050.0, 150.0, 4)):
        pages(joules, charging_s, images)
        energy = fake_upstream.learn()
    assert energy == pytest.approx(500.0)  # not pulled towards 25 J by the charger's stretch
    pages(2050.0, 150.0, 6)
    energy = fake_upstream.learn()
    assert energy is not None and energy > 250.0  # learning again
