"""Locust load model of the gateway: users that call ``edgediff.v1.Generator/Generate``.

Closed loop by default (each user sends its next request when its last one returns); with ``--edgediff-rate R``
an open loop: the users are a pool that sends requests at Poisson arrival times of R per second
(``loadtest.arrivals``), and arrivals no user could send on time are counted as missed. Run by ``edgediff loadtest``
(which adds the report), or by hand::

    export EDGEDIFF_LOADTEST_VARIANTS="onnx-fp32:3,torch-fp32:1" EDGEDIFF_LOADTEST_STEPS=20
    locust -f loadtest/locustfile.py --headless --host 127.0.0.1:50051 -u 4 -r 1 -t 60s

The mix comes from the ``--edgediff-*`` options below or the ``EDGEDIFF_LOADTEST_*`` variables they default to. Each
call is reported to Locust's ``request`` event as ``grpc`` / ``Generate <variant>`` with its latency, and a failed
call as a failure carrying its gRPC status (``UNAUTHENTICATED: ...``), never dropped.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import gevent
from locust import events, task
from locust.env import Environment

from edgediff.constants import (
    ENV_LOADTEST_BATCH,
    ENV_LOADTEST_ETA,
    ENV_LOADTEST_EXPORTER_URL,
    ENV_LOADTEST_GATEWAY_METRICS_URL,
    ENV_LOADTEST_RATE,
    ENV_LOADTEST_RECORD_DIR,
    ENV_LOADTEST_SEEDS,
    ENV_LOADTEST_STEPS,
    ENV_LOADTEST_TIMEOUT,
    ENV_LOADTEST_TOKEN,
    ENV_LOADTEST_VARIANTS,
)
from edgediff.errors import InvalidArgumentError
from loadtest.arrivals import PoissonArrivals
from loadtest.grpc_user import GrpcUser
from loadtest.mix import RequestMix
from loadtest.records import RecordBook, WindowMarks
from services.gateway.auth import AUTH_METADATA_KEY, BEARER_PREFIX
from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

logger = logging.getLogger(__name__)

_book = RecordBook(role="local")
_mix = RequestMix()
_arrivals: PoissonArrivals | None = None


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    # Locust's parser (configargparse) takes env_var= and is_secret=; argument groups would not.
    parser.add_argument("--edgediff-variants", env_var=ENV_LOADTEST_VARIANTS, default="default",
                        help="variants, e.g. onnx-fp32:3,torch-fp32:1 ('default': the server's default)")
    parser.add_argument("--edgediff-steps", env_var=ENV_LOADTEST_STEPS, default="default",
                        help="steps, e.g. 20 ('default': the server's default)")
    parser.add_argument("--edgediff-batch", env_var=ENV_LOADTEST_BATCH, default="1", help="images per request")
    parser.add_argument("--edgediff-eta", env_var=ENV_LOADTEST_ETA, default="0", help="DDIM eta, 0..1")
    parser.add_argument("--edgediff-seeds", env_var=ENV_LOADTEST_SEEDS, default="random",
                        help="'random', a seed N, or a range A-B")
    parser.add_argument("--edgediff-timeout", env_var=ENV_LOADTEST_TIMEOUT, type=float, default=120.0,
                        help="deadline of one Generate call, seconds")
    parser.add_argument("--edgediff-token", env_var=ENV_LOADTEST_TOKEN, default="", is_secret=True,
                        help="bearer token for a gateway started with --token-file")
    parser.add_argument("--edgediff-record-dir", env_var=ENV_LOADTEST_RECORD_DIR, default="",
                        help="write per-request records (and, from the master, the window marks) here")
    parser.add_argument("--edgediff-exporter-url", env_var=ENV_LOADTEST_EXPORTER_URL, default="",
                        help="telemetry exporter metrics URL scraped when the test starts and stops")
    parser.add_argument("--edgediff-gateway-metrics-url", env_var=ENV_LOADTEST_GATEWAY_METRICS_URL, default="",
                        help="gateway metrics URL scraped at the same instants")
    parser.add_argument("--edgediff-rate", env_var=ENV_LOADTEST_RATE, type=float, default=0.0,
                        help="open loop: Poisson arrivals per second in this process (0: closed loop)")


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _mix, _arrivals
    # gevent's loop caches "now" and has not run since Locust was imported: refresh it, or Locust's --run-time timer
    # (spawn_later from the cached time) fires early by however long the imports took.
    gevent.get_hub().loop.update_now()
    options = environment.parsed_options
    try:
        _mix = RequestMix.parse(options.edgediff_variants, options.edgediff_steps, options.edgediff_batch,
                                options.edgediff_eta, options.edgediff_seeds,
                                names={k: f"--edgediff-{k}" for k in ("variants", "steps", "batch", "eta", "seeds")})
    except InvalidArgumentError as exc:
        raise SystemExit(f"locustfile: {exc}") from None  # Locust logs and swallows any Exception from a listener
    GeneratorUser.timeout_s = float(options.edgediff_timeout)
    if options.edgediff_rate < 0:
        raise SystemExit(f"locustfile: --edgediff-rate must be >= 0, got {options.edgediff_rate}")
    _arrivals = PoissonArrivals(float(options.edgediff_rate)) if options.edgediff_rate > 0 else None
    _book.arrivals = _arrivals
    if options.edgediff_token:
        GeneratorUser.metadata = ((AUTH_METADATA_KEY, BEARER_PREFIX + options.edgediff_token),)
    record_dir = Path(options.edgediff_record_dir) if options.edgediff_record_dir else None
    role = type(environment.runner).__name__.removesuffix("Runner").lower() or "local"
    _book.role, _book.record_dir = role, record_dir
    if role != "master":
        environment.events.request.add_listener(_book.on_request)
        environment.events.test_stop.add_listener(lambda **_kw: _arrivals and _arrivals.close())
        environment.events.quitting.add_listener(lambda **_kw: _book.write())
    if role != "worker":
        marks = WindowMarks(record_dir, options.edgediff_exporter_url or None,
                            options.edgediff_gateway_metrics_url or None)
        environment.events.test_start.add_listener(marks.on_test_start)
        environment.events.test_stop.add_listener(marks.on_test_stop)


class GeneratorUser(GrpcUser):
    """A client that sends its next Generate request as soon as the previous one returns (a closed loop).

    After a failed call it pauses ``failure_pause_s`` first, so a gateway that refuses everything (a missing token,
    a wrong port) is not hammered by a tight loop of failures. In an open-loop run (``--edgediff-rate``) it instead
    claims the next arrival of the process's schedule, sleeps until its time and sends it then.
    """

    stub_class = generator_pb2_grpc.GeneratorStub
    failure_pause_s = 0.1

    def on_start(self) -> None:
        """Give each user its own random stream."""
        self.rng = random.Random()
        self.last_failed = False

    def wait_time(self) -> float:
        """No pause after a success (closed loop); ``failure_pause_s`` after a failure; none in an open loop."""
        return self.failure_pause_s if self.last_failed and _arrivals is None else 0.0

    @task
    def generate(self) -> None:
        """One Generate call drawn from the mix (in an open loop, at the next arrival's time)."""
        if _arrivals is not None:
            due_s = _arrivals.claim()
            gevent.sleep(max(0.0, due_s - _arrivals.clock()))
            _arrivals.sent_at(due_s)
        spec = _mix.next_request(self.rng)
        request = generator_pb2.GenerateRequest(seed=spec.seed, steps=spec.steps, eta=spec.eta, variant=spec.variant,
                                                batch_size=spec.batch, format="png")
        self.last_failed = self.call(self.stub.Generate, request) is None

    def describe(self, method: str, request: Any) -> tuple[str, dict[str, Any]]:
        """``Generate <variant>`` and the request's fields."""
        variant = request.variant or "default"
        context = {"variant": variant, "steps": request.steps, "batch": request.batch_size}
        return f"{method.rsplit('/', 1)[-1]} {variant}", context

    def measure_response(self, response: Any) -> tuple[int, dict[str, Any]]:
        """Response size, the number of images received and the steps the server used (its default if none asked)."""
        return int(response.ByteSize()), {"images": len(response.images), "steps": int(response.steps)}

    def on_call_cancelled(self, name: str) -> None:
        """Count calls cancelled because Locust stopped this user."""
        _book.note_cancelled(name)
