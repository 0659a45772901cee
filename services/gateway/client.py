"""A small client of the Generator gateway, for scripts, the load test and the benchmarks.

    with GeneratorClient("127.0.0.1:50051", token="...") as client:
        response = client.generate(seed=1, steps=20, variant="onnx-fp32")
        open("x.png", "wb").write(response.images[0])

Calls raise ``grpc.RpcError`` (``.code()``, ``.details()``) on any status other than OK.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GeneratorClient:
    """Talks to one gateway.

    Args:
        target: ``host:port``.
        token: Bearer token sent as ``authorization`` metadata (None: none).
        tls_ca: PEM bytes or a path to the CA (or self-signed certificate) that signed the server's certificate;
            None means plaintext.
        tls_server_name: Override the name checked against the certificate (when ``target`` is an IP that the
            certificate does not list).
        tls_cert: PEM bytes or a path to a client certificate chain, for servers that require one (with ``tls_key``
            and ``tls_ca``).
        tls_key: PEM bytes or a path to the client certificate's private key.
        timeout_s: Default deadline of every call (None: no deadline).
        channel_options: More gRPC channel arguments (e.g. a service config with a retry policy).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls_ca: bytes | str | Path | None = None,
        tls_server_name: str | None = None,
        tls_cert: bytes | str | Path | None = None,
        tls_key: bytes | str | Path | None = None,
        timeout_s: float | None = None,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                          *(channel_options or [])]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if (tls_cert is None) != (tls_key is None) or (tls_cert is not None and tls_ca is None):
            raise ValueError("a client certificate needs tls_cert, tls_key and tls_ca")
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=_pem(tls_ca), private_key=_pem(tls_key),
                                                 certificate_chain=_pem(tls_cert))
            self._channel = grpc.secure_channel(target, creds, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout_s = timeout_s
        self._stub = generator_pb2_grpc.GeneratorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.target = target

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    def generate(
        self,
        *,
        seed: int = 0,
        steps: int = 0,
        eta: float = 0.0,
        variant: str = "",
        batch_size: int = 0,
        format: str = "png",
        timeout_s: float | None = None,
        scheduler: str = "",
    ) -> Any:
        """Call ``Generate``; returns the ``GenerateResponse`` (``images`` are PNG bytes).

        Args:
            seed: Seed of the initial noise.
            steps: DDIM steps (0: the server's default, 20).
            eta: DDIM eta in 0..1.
            variant: Variant name ("" : the server's default).
            batch_size: Images (0: 1).
            format: ``png``.
            timeout_s: Deadline of this call (default: the client's).
            scheduler: ``ddim``, ``dpmpp`` or ``unipc`` ("": the server's default).
        """
        request = generator_pb2.GenerateRequest(seed=seed, steps=steps, eta=eta, variant=variant,
                                                batch_size=batch_size, format=format, scheduler=scheduler)
        return self._stub.Generate(request, timeout=self._timeout(timeout_s), metadata=self._metadata)

    def generate_future(self, *, timeout_s: float | None = None, **fields: Any) -> grpc.Future:
        """Start ``Generate`` without waiting: a ``grpc.Future`` whose ``cancel()`` cancels the call on the server.

        Args:
            timeout_s: Deadline of this call (default: the client's).
            **fields: ``GenerateRequest`` fields (``seed``, ``steps``, ``eta``, ``variant``, ``batch_size``,
                ``format``, ``scheduler``).
        """
        request = generator_pb2.GenerateRequest(**fields)
        return self._stub.Generate.future(request, timeout=self._timeout(timeout_s), metadata=self._metadata)

    def list_variants(self, timeout_s: float | None = None) -> Any:
        """Call ``ListVariants``; returns the ``ListVariantsResponse``."""
        return self._stub.ListVariants(generator_pb2.ListVariantsRequest(), timeout=self._timeout(timeout_s),
                                       metadata=self._metadata)

    def health(self, service: str = "", timeout_s: float = 5.0) -> str:
        """The standard health check's status name: ``SERVING``, ``NOT_SERVING``, ``SERVICE_UNKNOWN``...

        Args:
            service: ``""`` (the whole server) or ``edgediff.v1.Generator``.
            timeout_s: Deadline of the check.
        """
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s,
                                      metadata=self._metadata)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_serving(self, timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        """Poll the health check until ``SERVING``.

        Raises:
            TimeoutError: not serving after ``timeout_s`` (the message has the last status or error).
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout_s=max(0.1, min(2.0, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(poll_s)
        raise TimeoutError(f"{self.target} not SERVING after {timeout_s:.0f} s (last: {last})")

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> GeneratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pem(value: bytes | str | Path | None) -> bytes | None:
    """PEM bytes given as bytes or a file path (None stays None)."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
