"""The ``fleet`` backend: one endpoint in front of many edgediff gateways, each request sent where it costs least.

``edgediff serve --backend fleet --upstream A --upstream B ...`` serves the same ``edgediff.v1.Generator`` API as any
gateway; behind it, every request goes to one upstream gateway (a desktop GPU, a Jetson, a phone...) chosen by a
policy over what each upstream costs, learned live from what edgediff already exports:

- **latency**: a moving average of each upstream's service time per image for each variant (its total minus its queue
  time, from each response's timings, plus the transfer; the first guess is the upstream's
  ``edgediff_gateway_stage_duration_seconds{stage="total"}`` mean), times the work ahead of a new request there (the
  router's requests in flight to it, or the upstream's ``in_flight`` + ``queue_depth`` gauges, whichever is larger);
- **energy per image**: the increase of the upstream's telemetry exporter counter ``edgediff_energy_joules_total``
  between two refreshes over the increase of its ``edgediff_gateway_images_total``, with the bench's rules
  (``edgediff.telemetry.counters``): the sum of its whole domains (never a part added to its whole), net of the
  exporter's idle baseline when every whole has one, when the upstream has a power sensor; unknown otherwise (never
  guessed). An interval in which a whole domain's ``edgediff_energy_unmeasured_seconds_total`` grew (a phone on its
  charger, a sampling gap) is not learned from;
- **health**: the standard gRPC health check of each upstream, every ``refresh_s``.

Policies: ``fastest`` (least predicted latency), ``lowest-energy`` (least measured energy per image; upstreams
without a sensor come after those with one), ``edge-first`` (the cheapest upstream -- by measured energy per image,
else the order given -- whose predicted latency meets the request's deadline, or ``latency_target_s`` when the
client set none; when none does, the fastest).

Failover: a generation has no side effects (the same seed makes the same image), so a request refused by an upstream
with UNAVAILABLE (down, or its backend down), RESOURCE_EXHAUSTED (its queue full) or CANCELLED while the router's
client still waits, or DEADLINE_EXCEEDED before the client's deadline (the upstream's server ended the call: it
is shutting down) is sent to the next upstream in the policy's order; only when every upstream refused does the
router answer UNAVAILABLE (the gateway in front then holds the request while no upstream serves, as it does for
Triton restarts) or RESOURCE_EXHAUSTED. Each channel also carries gRPC's own retry policy (service config
``retryPolicy`` on UNAVAILABLE) for connection blips to one upstream.
An address that leaves DNS takes no new calls; its channel is closed once the calls it is finishing are done.

Upstreams are ``HOST:PORT`` or ``dns:NAME:PORT`` (every address the name resolves to is one upstream, re-resolved on
each refresh: a Kubernetes headless service); options after ``;``: ``metrics=URL`` (the upstream gateway's
Prometheus endpoint, default ``http://HOST:9401/metrics``), ``exporter=URL`` (its telemetry exporter, default
``http://HOST:9400/metrics``), ``name=LABEL`` (the metrics label; default ``HOST:PORT``), each ``none`` to disable.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from edgediff.constants import (
    EXPORTER_PORT,
    GATEWAY_METRICS_PORT,
    METRIC_FLEET_REQUESTS_TOTAL,
    METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES,
    METRIC_FLEET_UPSTREAM_LATENCY_SECONDS,
    METRIC_FLEET_UPSTREAM_UP,
    METRIC_GATEWAY_IMAGES_TOTAL,
    METRIC_GATEWAY_IN_FLIGHT,
    METRIC_GATEWAY_QUEUE_DEPTH,
    METRIC_GATEWAY_STAGE_SECONDS,
)
from edgediff.errors import InvalidArgumentError, VariantUnavailableError
from edgediff.pipeline import GenerationCancelled
from edgediff.telemetry.counters import (
    ExporterState,
    counter_window,
    parse_exporter,
    samples_by_name,
    scrape,
    whole_energy,
)
from services.gateway.admission import QueueFullError
from services.gateway.backends.base import (
    Backend,
    BackendResult,
    BackendUnavailableError,
    GenerateArgs,
    VariantStatus,
)
from services.gateway.client import GeneratorClient

logger = logging.getLogger(__name__)

POLICIES = ("fastest", "lowest-energy", "edge-first")
DEFAULT_POLICY = "edge-first"
DEFAULT_REFRESH_S = 2.0
DEFAULT_LATENCY_TARGET_S = 30.0
EWMA_ALPHA = 0.3
"""Weight of the newest observation in the moving averages of latency and energy per image."""
SCRAPE_TIMEOUT_S = 2.0
DEFAULT_UPSTREAM_DEADLINE_S = 600.0
"""Deadline of an upstream call whose client set none (the gateway's ``--default-deadline`` replaces it)."""
CANCEL_POLL_S = 0.1
"""How often a waiting upstream call checks whether its client went away (then the call is cancelled upstream)."""
FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
ENDED_BY_UPSTREAM_CODES = (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Codes of a call the upstream's server ended itself (failed over while the router's client still waits)."""
RETRY_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "edgediff.v1.Generator"}],
        "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.1s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})
"""gRPC's own retry of a call to one upstream when the connection blips; failover to another is the router's."""
CHANNEL_OPTIONS = [("grpc.service_config", RETRY_SERVICE_CONFIG), ("grpc.enable_retries", 1),
                   ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass(frozen=True)
class UpstreamSpec:
    """One ``--upstream`` as given.

    Attributes:
        address: ``HOST:PORT``, or ``NAME:PORT`` to be resolved when ``dns`` is set.
        dns: Resolve ``address``'s host to every address it has, each one upstream.
        metrics_url: The upstream gateway's Prometheus endpoint, or None.
        exporter_url: The upstream's telemetry exporter endpoint, or None.
        name: Label in metrics and ListVariants (default: the address).
    """

    address: str
    dns: bool = False
    metrics_url: str | None = None
    exporter_url: str | None = None
    name: str = ""


def _split_host_port(address: str, flag: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgumentError(f"{flag}: expected HOST:PORT with a port in 1..65535, got {address!r}")
    return host.strip("[]"), int(port)


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse one ``--upstream`` value (see the module's docstring).

    Raises:
        InvalidArgumentError: the address or an option is malformed.
    """
    address, *options = [part.strip() for part in text.split(";")]
    dns = address.startswith("dns:")
    if dns:
        address = address[len("dns:"):]
    host, port = _split_host_port(address, "--upstream")
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets in addresses and URLs
    values: dict[str, str | None] = {"metrics": f"http://{host}:{GATEWAY_METRICS_PORT}/metrics",
                                     "exporter": f"http://{host}:{EXPORTER_PORT}/metrics", "name": ""}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in values:
            raise InvalidArgumentError(f"--upstream {text!r}: options are metrics=URL, exporter=URL, name=LABEL; "
                                       f"got {option!r}")
        if key != "name" and value != "none" and not value.startswith(("http://", "https://")):
            raise InvalidArgumentError(f"--upstream {text!r}: {key} must be an http(s) URL or 'none', got {value!r}")
        values[key] = None if value == "none" else value
    return UpstreamSpec(address=f"{host}:{port}", dns=dns, metrics_url=values["metrics"],
                        exporter_url=values["exporter"], name=values["name"] or "")


def check_settings(upstreams: list[str], policy: str, refresh_s: float, latency_target_s: float
                   ) -> list[UpstreamSpec]:
    """Check the fleet settings (``GatewayConfig.check`` does, the one place they are checked).

    Returns:
        The parsed ``upstreams``: what ``FleetBackend`` takes.

    Raises:
        InvalidArgumentError: naming the flag of the first bad setting.
    """
    if not upstreams:
        raise InvalidArgumentError("--backend fleet needs at least one --upstream HOST:PORT")
    specs = [parse_upstream(text) for text in upstreams]
    if policy not in POLICIES:
        raise InvalidArgumentError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if refresh_s <= 0:
        raise InvalidArgumentError(f"--fleet-refresh must be > 0 seconds, got {refresh_s}")
    if latency_target_s <= 0:
        raise InvalidArgumentError(f"--latency-target must be > 0 seconds, got {latency_target_s}")
    return specs


def resolve(spec: UpstreamSpec) -> list[UpstreamSpec]:
    """The upstreams ``spec`` stands for: itself, or one per address its DNS name resolves to (sorted)."""
    if not spec.dns:
        return [spec]
    host, port = _split_host_port(spec.address, "--upstream")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        logger.warning("upstream dns:%s: %s", spec.address, exc)
        return []
    addresses = sorted({info[4][0] for info in infos})
    out = []
    for ip in addresses:
        shown = f"[{ip}]" if ":" in ip else ip
        out.append(UpstreamSpec(
            address=f"{shown}:{port}", metrics_url=_with_host(spec.metrics_url, host, shown),
            exporter_url=_with_host(spec.exporter_url, host, shown), name=f"{spec.name or host}/{shown}:{port}"))
    return out


def _with_host(url: str | None, host: str, replacement: str) -> str | None:
    return url.replace(f"//{host}:", f"//{replacement}:", 1) if url else url


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value)]}`` of a Prometheus text endpoint.

    Raises:
        OSError: The endpoint did not answer.
        ValueError: Its text is not Prometheus exposition format.
    """
    scraped = scrape(url, SCRAPE_TIMEOUT_S)
    if scraped.text is None:
        raise OSError(scraped.error)
    return samples_by_name(scraped.text)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * new


@dataclass
class Upstream:
    """One upstream gateway and what the router has learned of it.

    Attributes:
        spec: Where it is.
        client: The channel to it.
        order: Its position in the operator's list (edge-first's tie-break: earlier is cheaper).
        healthy: The last health check said SERVING.
        model: The preset it serves (from ListVariants).
        variants: Its variants (from ListVariants).
        default_variant: The variant it uses when a request names none.
        latency_s: Moving average of seconds per image, per variant (router-observed).
        served_latency_s: The upstream's own mean total seconds per request, per variant (its metrics).
        remote_load: Its ``in_flight`` + ``queue_depth`` gauges at the last scrape.
        outstanding: The router's requests in flight to it now.
        energy_per_image_j: Moving average of measured joules per image; None without a power sensor.
    """

    spec: UpstreamSpec
    client: GeneratorClient
    order: int
    healthy: bool = False
    model: str = ""
    variants: dict[str, VariantStatus] = field(default_factory=dict)
    default_variant: str = ""
    latency_s: dict[str, float] = field(default_factory=dict)
    served_latency_s: dict[str, float] = field(default_factory=dict)
    remote_load: float = 0.0
    outstanding: int = 0
    energy_per_image_j: float | None = None
    closed: bool = False  # left DNS and its channel closed: a call that chose it before goes to the next
    _last_energy: tuple[ExporterState, float, float] | None = None  # (exporter, images, unix s) at the last scrape

    @property
    def name(self) -> str:
        """Label in metrics and messages."""
        return self.spec.name or self.spec.address

    def seconds_per_image(self, variant: str) -> float | None:
        """What one image of ``variant`` costs here, seconds (None: nothing learned yet)."""
        return self.latency_s.get(variant, self.served_latency_s.get(variant))

    def predicted_s(self, variant: str, images: int) -> float:
        """Predicted time for ``images`` more images of ``variant`` here, queue ahead included (0: unknown)."""
        per_image = self.seconds_per_image(variant)
        if per_image is None:
            return 0.0  # unknown: try it (the first requests teach the router)
        ahead = max(float(self.outstanding), self.remote_load)
        return per_image * (images + ahead)

    def runs(self, variant: str) -> bool:
        """Healthy and able to run ``variant`` ("" : its default)."""
        status = self.variants.get(variant or self.default_variant)
        return self.healthy and status is not None and status.available


def order_candidates(upstreams: Iterable[Upstream], policy: str, variant: str, images: int,
                     budget_s: float) -> list[Upstream]:
    """The upstreams that can run ``variant``, in the order ``policy`` tries them.

    Args:
        upstreams: All upstreams.
        policy: One of ``POLICIES``.
        variant: The requested variant ("": each upstream's default).
        images: Images in the request.
        budget_s: The latency the request must meet (edge-first).
    """
    able = [u for u in upstreams if u.runs(variant)]

    def speed(u: Upstream) -> tuple[float, int]:
        return u.predicted_s(variant or u.default_variant, images), u.order

    def energy(u: Upstream) -> tuple[float, int]:
        return (u.energy_per_image_j if u.energy_per_image_j is not None else float("inf")), u.order

    if policy == "fastest":
        return sorted(able, key=speed)
    if policy == "lowest-energy":
        return sorted(able, key=lambda u: (*energy(u), *speed(u)))
    if policy == "edge-first":
        cheapest_first = sorted(able, key=energy)
        meets = [u for u in cheapest_first if speed(u)[0] <= budget_s]
        return meets + sorted((u for u in able if u not in meets), key=speed)
    raise InvalidArgumentError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")


class FleetMetrics:
    """Per-upstream metrics of the router (labels: the upstream's name, bounded by the operator's list)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(METRIC_FLEET_REQUESTS_TOTAL,
                                "Generate requests the router sent to an upstream, by outcome: ok, failed_over "
                                "(refused with UNAVAILABLE/RESOURCE_EXHAUSTED, tried elsewhere) or error",
                                ["upstream", "outcome"], registry=registry)
        self.up = Gauge(METRIC_FLEET_UPSTREAM_UP, "Whether the upstream answered its last health check SERVING",
                        ["upstream"], registry=registry)
        self.latency = Gauge(METRIC_FLEET_UPSTREAM_LATENCY_SECONDS,
                             "Learned seconds per image of the upstream, by variant (router-observed moving average)",
                             ["upstream", "variant"], registry=registry)
        self.energy = Gauge(METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES,
                            "Measured joules per image of the upstream (its telemetry exporter; absent without a "
                            "power sensor)", ["upstream"], registry=registry)


class FleetBackend(Backend):
    """Routes each request to one of several upstream gateways (see the module's docstring).

    The settings come checked (``check_settings``, through ``GatewayConfig.check``); the backend does not check
    them again.

    Args:
        upstreams: The parsed ``--upstream`` values (at least one).
        policy: One of ``POLICIES``.
        refresh_s: Seconds between health checks and metric scrapes of every upstream.
        latency_target_s: edge-first's latency target for requests without a deadline.
        token: Bearer token the upstreams require (None: none).
        tls_ca: CA of upstreams that speak TLS (None: plaintext).
        tls_cert: Client certificate chain for upstreams that require one (with ``tls_key``; needs ``tls_ca``).
        tls_key: Private key of ``tls_cert``.
        tls_server_name: Name checked against the upstreams' certificates instead of their addresses.
        default_deadline_s: Deadline of an upstream call when the client set none, seconds. A call is also
            cancelled upstream as soon as its client goes away.
    """

    name = "fleet"

    def __init__(self, upstreams: list[UpstreamSpec], *, policy: str = DEFAULT_POLICY,
                 refresh_s: float = DEFAULT_REFRESH_S, latency_target_s: float = DEFAULT_LATENCY_TARGET_S,
                 token: str | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_server_name: str | None = None,
                 default_deadline_s: float = DEFAULT_UPSTREAM_DEADLINE_S) -> None:
        super().__init__()
        self.specs = upstreams
        self.policy = policy
        self.refresh_s = refresh_s
        self.latency_target_s = latency_target_s
        self._token = token
        self._tls = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key, "tls_server_name": tls_server_name}
        self.default_deadline_s = default_deadline_s
        self._lock = threading.Lock()
        self._upstreams: dict[str, Upstream] = {}
        self._retired: list[Upstream] = []  # gone from DNS with calls still in flight: closed once those end
        self._metrics: FleetMetrics | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = False

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Register the per-upstream metrics in the gateway's registry."""
        self._metrics = FleetMetrics(registry)

    def start(self) -> None:
        """First look at every upstream, then keep looking in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="fleet-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching and close every channel."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_s + SCRAPE_TIMEOUT_S * 3)
        with self._lock:
            upstreams, self._upstreams = [*self._upstreams.values(), *self._retired], {}
            self._retired = []
        for upstream in upstreams:
            upstream.client.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # a watcher that dies would freeze every upstream's health
                logger.exception("fleet refresh failed")

    def upstreams(self) -> list[Upstream]:
        """The current upstreams, in the operator's order."""
        with self._lock:
            return sorted(self._upstreams.values(), key=lambda u: u.order)

    def refresh(self) -> None:
        """Resolve names, then check health, variants, load and energy of every upstream."""
        wanted: list[UpstreamSpec] = []
        for spec in self.specs:
            wanted.extend(resolve(spec))
        with self._lock:
            # An address that left DNS (a Swarm task stopping, a pod deleted) takes no new calls, but closing its
            # channel would cancel the calls it is still finishing: it is closed once they are done.
            self._retired.extend(self._upstreams.pop(address)
                                 for address in set(self._upstreams) - {s.address for s in wanted})
            done = [u for u in self._retired if u.outstanding == 0]
            self._retired = [u for u in self._retired if u.outstanding > 0]
            for upstream in done:
                upstream.closed = True
            for order, spec in enumerate(wanted):
                if spec.address not in self._upstreams:
                    client = GeneratorClient(spec.address, token=self._token, channel_options=CHANNEL_OPTIONS,
                                             **self._tls)
                    self._upstreams[spec.address] = Upstream(spec=spec, client=client, order=order)
                self._upstreams[spec.address].order = order
        for upstream in done:
            upstream.client.close()
        for upstream in self.upstreams():
            self._refresh_one(upstream)
        healthy = self.healthy()
        if healthy != self._was_healthy:
            self._was_healthy = healthy
            logger.info("fleet: %s", "serving" if healthy else "no upstream serves")
            self._notify_health(healthy)

    def _refresh_one(self, upstream: Upstream) -> None:
        try:
            serving = upstream.client.health(timeout_s=SCRAPE_TIMEOUT_S) == "SERVING"
            if serving and (not upstream.variants or not upstream.healthy):
                self._list_variants(upstream)
        except grpc.RpcError as exc:
            serving = False
            logger.debug("upstream %s: %s", upstream.name, exc.code().name)
        self._set_health(upstream, serving)
        if serving and upstream.spec.metrics_url:
            try:  # one scrape of the upstream gateway serves both what follows
                samples = _scrape(upstream.spec.metrics_url)
            except (OSError, ValueError) as exc:
                logger.debug("upstream %s metrics: %s", upstream.name, exc)
                return
            self._learn_load(upstream, samples)
            self._learn_energy(upstream, samples)

    def _list_variants(self, upstream: Upstream) -> None:
        response = upstream.client.list_variants(timeout_s=SCRAPE_TIMEOUT_S * 5)
        upstream.model = response.model
        upstream.variants = {v.name: VariantStatus(name=v.name, available=v.available, reason=v.reason,
                                                   backend=v.backend, precision=v.precision)
                             for v in response.variants}
        upstream.default_variant = next((v.name for v in response.variants if v.is_default), "")

    def _learn_load(self, upstream: Upstream, samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        """Queue ahead and mean service time per variant, from the upstream gateway's metrics ``samples``."""
        upstream.remote_load = sum(value for name in (METRIC_GATEWAY_IN_FLIGHT, METRIC_GATEWAY_QUEUE_DEPTH)
                                   for _labels, value in samples.get(name, []))
        stage = {(labels.get("stage"), labels.get("variant")): value
                 for labels, value in samples.get(f"{METRIC_GATEWAY_STAGE_SECONDS}_sum", [])}
        counts = {labels.get("variant"): value
                  for labels, value in samples.get(f"{METRIC_GATEWAY_STAGE_SECONDS}_count", [])
                  if labels.get("stage") == "total"}
        for variant, count in counts.items():
            if variant and count > 0:  # mean service time per request there: total minus queue
                service_s = stage.get(("total", variant), 0.0) - stage.get(("queue", variant), 0.0)
                upstream.served_latency_s[variant] = max(0.0, service_s) / count

    def _learn_energy(self, upstream: Upstream, samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        """Joules per image: the exporter's energy counter over the images in the gateway's metrics ``samples``."""
        if not upstream.spec.exporter_url:
            return
        images = sum(value for _labels, value in samples.get(METRIC_GATEWAY_IMAGES_TOTAL, []))
        scraped = scrape(upstream.spec.exporter_url, SCRAPE_TIMEOUT_S)
        try:
            if scraped.text is None:
                raise OSError(scraped.error)
            state = parse_exporter(scraped.text)
        except (OSError, ValueError) as exc:
            logger.debug("upstream %s energy: %s", upstream.name, exc)
            return
        if not state.energy_j:
            return  # no power sensor there: its energy stays unknown, never guessed
        previous, upstream._last_energy = upstream._last_energy, (state, images, scraped.t_unix_s)
        if previous is None or not scraped.t_unix_s > previous[2]:
            return
        # the bench's rules: the whole domains' sum, net of idle; none when a whole skipped time (a phone on its
        # charger, a sampling gap, a suspend): its increase is too small to be the energy of those images
        whole = whole_energy(counter_window(previous[0], state, scraped.t_unix_s - previous[2]))
        per_image_j = whole.per_image_j(images - previous[1]) if whole is not None else None
        if whole is None:
            logger.debug("upstream %s energy: a whole domain was not measured since the last scrape; not learned",
                         upstream.name)
        if per_image_j is not None:
            upstream.energy_per_image_j = _ewma(upstream.energy_per_image_j, per_image_j)
            if self._metrics is not None:
                self._metrics.energy.labels(upstream=upstream.name).set(upstream.energy_per_image_j)

    # -- the Backend interface -------------------------------------------------------------------------------------

    def model_name(self) -> str:
        """The preset the upstreams serve (the first healthy one's)."""
        return next((u.model for u in self.upstreams() if u.model), "")

    def known_variants(self) -> list[str]:
        """Every variant any upstream lists."""
        names: dict[str, None] = {}
        for upstream in self.upstreams():
            names.update(dict.fromkeys(upstream.variants))
        return list(names)

    def variant_status(self, name: str) -> VariantStatus:
        """Available when a healthy upstream runs it; the reason says where it runs (or why nowhere)."""
        rows = [(u, u.variants[name]) for u in self.upstreams() if name in u.variants]
        where = [u.name for u, status in rows if u.healthy and status.available]
        first = rows[0][1] if rows else VariantStatus(name=name, available=False)
        if where:
            return VariantStatus(name=name, available=True, reason="", backend=first.backend,
                                 precision=first.precision, upstreams=tuple(where))
        reasons = "; ".join(f"{u.name}: {status.reason or 'down'}" for u, status in rows) or "no upstream lists it"
        return VariantStatus(name=name, available=False, reason=f"no upstream runs it now ({reasons})",
                             backend=first.backend, precision=first.precision)

    def default_variant(self) -> str:
        """``""``: a request that names no variant runs each upstream's own default (a GPU's and a phone's differ).

        Raises:
            BackendUnavailableError: no upstream serves.
        """
        if not self.healthy():
            raise BackendUnavailableError("no upstream gateway is serving", started=False)
        return ""

    def healthy(self) -> bool:
        """At least one upstream serves."""
        return any(u.healthy for u in self.upstreams())

    def unavailable_reason(self) -> str:
        """Which upstreams are down."""
        down = [u.name for u in self.upstreams() if not u.healthy]
        return f"upstreams down: {', '.join(down)}" if down else ""

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        """Send the request to the policy's first choice; fail over on UNAVAILABLE / RESOURCE_EXHAUSTED."""
        budget_s = timeout_s if timeout_s is not None else self.latency_target_s
        candidates = order_candidates(self.upstreams(), self.policy, args.variant, args.batch, budget_s)
        if not candidates:
            if not args.variant or any(args.variant in u.variants for u in self.upstreams()) or not self.healthy():
                raise BackendUnavailableError(f"no serving upstream runs {args.variant}", started=False)
            raise VariantUnavailableError(f"variant {args.variant}: no upstream gateway lists it")
        refusals: list[tuple[Upstream, grpc.StatusCode, str]] = []
        for upstream in candidates:
            if should_stop():
                raise GenerationCancelled("the client is gone")
            result = self._try(upstream, args, timeout_s, refusals, should_stop)
            if result is not None:
                return result
        codes = {code for _u, code, _m in refusals}
        detail = "; ".join(f"{u.name}: {code.name}: {message}" for u, code, message in refusals)
        if codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}:
            raise QueueFullError(f"every upstream's queue is full ({detail})")
        raise BackendUnavailableError(f"every upstream refused ({detail})", started=False)

    def _try(self, upstream: Upstream, args: GenerateArgs, timeout_s: float | None,
             refusals: list[tuple[Upstream, grpc.StatusCode, str]], should_stop: Callable[[], bool]
             ) -> BackendResult | None:
        with self._lock:
            if upstream.closed:  # it left DNS (and its channel closed) after this call chose it
                refusals.append((upstream, grpc.StatusCode.UNAVAILABLE, "gone from service discovery"))
                return None
            upstream.outstanding += 1
        t0 = time.perf_counter()
        try:
            call = upstream.client.generate_future(
                seed=args.seed, steps=args.steps, eta=args.eta, variant=args.variant, batch_size=args.batch,
                format=args.format, scheduler=args.scheduler,
                timeout_s=timeout_s if timeout_s is not None else self.default_deadline_s)
            response = _result(call, should_stop, upstream.name)
        except grpc.RpcError as exc:
            code, message = exc.code(), exc.details() or ""
            # CANCELLED or DEADLINE_EXCEEDED while this router's client still waits: the upstream ended the call (its
            # server shutting down, a Swarm task being replaced); no side effects, so the next upstream runs it
            if code in FAILOVER_CODES or (code in ENDED_BY_UPSTREAM_CODES and not should_stop()):
                refusals.append((upstream, code, message))
                self._count(upstream, "failed_over")
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._set_health(upstream, False)  # until its next health check says otherwise
                logger.info("upstream %s refused (%s); trying the next", upstream.name, code.name)
                return None
            self._count(upstream, "error")
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgumentError(message) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise VariantUnavailableError(message) from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise GenerationCancelled(f"upstream {upstream.name}: {code.name}") from None
            raise RuntimeError(f"upstream {upstream.name}: {code.name}: {message}") from None
        finally:
            with self._lock:
                upstream.outstanding -= 1
        timings = response.timings
        # the service time: the upstream's total minus its queue (the queue is what `ahead` predicts), plus transfer
        transfer_s = max(0.0, time.perf_counter() - t0 - timings.total_ms / 1e3)
        service_s = max(0.0, (timings.total_ms - timings.queue_ms) / 1e3) + transfer_s
        images = max(1, len(response.images))
        variant = response.variant or args.variant
        upstream.latency_s[variant] = _ewma(upstream.latency_s.get(variant), service_s / images)
        self._count(upstream, "ok")
        if self._metrics is not None:
            self._metrics.latency.labels(upstream=upstream.name, variant=variant).set(upstream.latency_s[variant])
        return BackendResult(images=list(response.images), denoise_s=timings.denoise_ms / 1e3,
                             decode_s=timings.decode_ms / 1e3, total_s=timings.total_ms / 1e3,
                             weights_origin=response.weights_origin, model=response.model, upstream=upstream.name,
                             variant=variant)

    def internal_addresses(self) -> list[str]:
        """The upstreams' addresses (never shown to clients)."""
        return sorted({spec.address for spec in self.specs} | {u.spec.address for u in self.upstreams()})

    def _set_health(self, upstream: Upstream, serving: bool) -> None:
        if serving != upstream.healthy:
            logger.info("upstream %s is %s", upstream.name, "serving" if serving else "down")
        upstream.healthy = serving
        if self._metrics is not None:
            self._metrics.up.labels(upstream=upstream.name).set(1.0 if serving else 0.0)

    def _count(self, upstream: Upstream, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.requests.labels(upstream=upstream.name, outcome=outcome).inc()



def _result(call: grpc.Future, should_stop: Callable[[], bool], name: str) -> object:
    """The response of an upstream ``call``, cancelling it upstream as soon as ``should_stop()`` (client gone).

    Raises:
        grpc.RpcError: the call failed.
        GenerationCancelled: ``should_stop()`` became true (the upstream call was cancelled).
    """
    while True:
        try:
            return call.result(timeout=CANCEL_POLL_S)
        except grpc.FutureTimeoutError:
            if should_stop():
                call.cancel()
                raise GenerationCancelled(f"upstream {name}: cancelled (the client went away or its deadline passed)"
                                          ) from None
