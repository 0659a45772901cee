"""A thin abstract gRPC ``User`` for Locust: an interceptor fires ``events.request`` with each call's real status.

Importing this module imports Locust, which monkey-patches the process with gevent; it also switches gRPC to gevent
(``grpc.experimental.gevent.init_gevent()``) so a call blocks only its own greenlet. Import it from a locustfile only.

Every call is reported once: a success with its latency and response size, a failure with a ``GrpcStatusError``
naming the gRPC status (``UNAUTHENTICATED: token required``), so failures are grouped by status in Locust's stats.
A call still in flight when Locust stops its user is cancelled on the wire and counted by ``on_call_cancelled``; it
is not a failure of the server, so it is not sent to Locust's stats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent
from locust import User
from locust.env import Environment

grpc.experimental.gevent.init_gevent()

REQUEST_TYPE = "grpc"
"""``request_type`` of every event this module fires (the first column of Locust's stats)."""
CLIENT_ERROR = "CLIENT_ERROR"
"""Status of a call that failed on the load generator's side (not a gRPC status from the server)."""
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest response accepted (a batch of PNGs)."""


class GrpcStatusError(Exception):
    """A gRPC call that ended with a status other than OK; ``str()`` is ``"<STATUS>: <details>"``.

    Attributes:
        code: The status name, e.g. ``UNAUTHENTICATED``.
        details: The server's message.
    """

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        # Locust groups failures by repr(); keep it readable in the failures table.
        return f"GrpcStatusError({self})"


def status_of(error: grpc.RpcError) -> tuple[str, str]:
    """Return ``(status name, details)`` of a failed call."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return name, str(details or "")


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Times each unary call and fires Locust's ``request`` event with its status.

    Args:
        environment: The Locust environment whose ``events.request`` is fired.
        describe: ``(method, request) -> (name in stats, context dict)``; the context reaches every ``request``
            listener (the load test's records use it).
        measure_response: ``(response) -> (response length in bytes, extra context)`` for a successful call.
        on_cancelled: Called with the name of a call cancelled because Locust stopped its user.
    """

    def __init__(
        self,
        environment: Environment,
        describe: Callable[[str, Any], tuple[str, dict[str, Any]]],
        measure_response: Callable[[Any], tuple[int, dict[str, Any]]],
        on_cancelled: Callable[[str], None],
    ) -> None:
        self.environment = environment
        self.describe = describe
        self.measure_response = measure_response
        self.on_cancelled = on_cancelled

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        """Run the call, wait for its outcome, report it, and return the outcome unchanged."""
        name, context = self.describe(client_call_details.method, request)
        start_time = time.time()
        start_perf_s = time.perf_counter()
        call = None
        try:
            call = continuation(client_call_details, request)
            response = call.result()
        except grpc.RpcError as error:
            code, details = status_of(error)
            failure = GrpcStatusError(code, details)
            self._fire(name, start_time, start_perf_s, 0, None, {**context, "status": code}, failure)
            if call is None:
                raise
            return call
        except Exception as exc:  # a bug on this side: still a failed call, reported, never dropped
            failure = GrpcStatusError(CLIENT_ERROR, f"{type(exc).__name__}: {exc}")
            self._fire(name, start_time, start_perf_s, 0, None, {**context, "status": CLIENT_ERROR}, failure)
            raise
        except BaseException:
            # GreenletExit (Locust stopping this user) or KeyboardInterrupt: stop the server's work too.
            if call is not None:
                call.cancel()
            self.on_cancelled(name)
            raise
        length, extra = self.measure_response(response)
        self._fire(name, start_time, start_perf_s, length, response, {**context, **extra, "status": "OK"}, None)
        return call

    def _fire(
        self,
        name: str,
        start_time: float,
        start_perf_s: float,
        length: int,
        response: Any,
        context: dict[str, Any],
        exception: Exception | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=name,
            start_time=start_time,
            response_time=(time.perf_counter() - start_perf_s) * 1000.0,
            response_length=length,
            response=response,
            context=context,
            exception=exception,
        )


def grpc_target(host: str) -> str:
    """Return ``HOST:PORT`` from Locust's ``--host`` (``HOST:PORT`` or ``grpc://HOST:PORT``)."""
    target = host.strip()
    for scheme in ("grpc://", "http://"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
    return target.rstrip("/")


class GrpcUser(User):
    """Abstract Locust user holding one intercepted channel to ``host`` and a stub of ``stub_class``.

    Subclasses set ``stub_class`` and call ``self.call(self.stub.Method, request)`` in their tasks; the outcome is
    already reported, so ``call`` returns the response, or ``None`` after a failure.

    Attributes:
        stub_class: The generated ``...Stub`` class.
        timeout_s: Deadline of each call, seconds.
        metadata: gRPC metadata sent with every call (e.g. an authorization header).
    """

    abstract = True
    stub_class: Any = None
    timeout_s: float = 60.0
    metadata: tuple[tuple[str, str], ...] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        if not self.host:
            raise ValueError("set the gateway address with --host HOST:PORT")
        interceptor = LocustInterceptor(environment, self.describe, self.measure_response, self.on_call_cancelled)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.insecure_channel(grpc_target(self.host), options=options)
        self.stub = self.stub_class(grpc.intercept_channel(self._channel, interceptor))

    def call(self, method: Any, request: Any) -> Any | None:
        """Call a unary method of ``self.stub``; return its response, or ``None`` when it failed (reported)."""
        future = method.future(request, metadata=self.metadata or None, timeout=self.timeout_s)
        try:
            return future.result()
        except grpc.RpcError:
            return None

    def describe(self, method: str, request: Any) -> tuple[str, dict[str, Any]]:
        """Name of a call in Locust's stats (``Generate``) and its context; override to add fields."""
        return method.rsplit("/", 1)[-1], {}

    def measure_response(self, response: Any) -> tuple[int, dict[str, Any]]:
        """Size of a response in bytes and extra context; override to add fields."""
        return int(response.ByteSize()), {}

    def on_call_cancelled(self, name: str) -> None:
        """Called when a call is cancelled because Locust stopped this user; override to count them."""

    def on_stop(self) -> None:
        """Close the channel."""
        self._channel.close()
