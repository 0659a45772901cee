"""Container healthchecks without curl or grpc_health_probe: ``python -m services.healthcheck MODE TARGET``.

Modes (exit status 0 when healthy, 1 otherwise, with one line on stderr saying why):

* ``grpc HOST:PORT`` asks the standard ``grpc.health.v1.Health/Check`` service (the gateway) and wants ``SERVING``
  (readiness); with ``--liveness`` any answer will do: the gateway's threads answer, and a ``NOT_SERVING`` backend
  (Triton restarting) is not fixed by restarting the gateway. Use it, not ``tcp``, for the gateway's liveness: an
  open port says nothing of a server whose threads are all stuck;
* ``http URL`` wants a 2xx answer (Triton's ``/v2/health/ready``, an exporter's ``/metrics``, Locust's web UI);
* ``tcp HOST:PORT`` wants a TCP connection to succeed (a Locust worker checking that its master listens).

TLS (``grpc`` mode): ``--tls-ca PEM`` (the CA that signed the gateway's certificate, or the self-signed certificate)
switches to TLS, ``--tls-cert``/``--tls-key`` add a client certificate, ``--tls-server-name`` checks the certificate
against that name instead of HOST. Each has an environment variable (``EDGEDIFF_HEALTHCHECK_TLS_CA``, ``_CERT``,
``_KEY``, ``_SERVER_NAME``), so a container whose gateway serves TLS sets them once and its probe commands stay the
same.

Only the standard library and grpcio (with grpcio-health-checking) are used, and grpc is imported only in the
``grpc`` mode, so the check runs in every edgediff image.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 3.0
ENV_PREFIX = "EDGEDIFF_HEALTHCHECK_"
"""``EDGEDIFF_HEALTHCHECK_TLS_CA``, ``_TLS_CERT``, ``_TLS_KEY``, ``_TLS_SERVER_NAME``: the TLS flags' defaults."""


@dataclass(frozen=True)
class Tls:
    """How to reach a gRPC server over TLS.

    Attributes:
        ca: PEM file of the CA (or self-signed certificate) that signed the server's certificate.
        cert: PEM client certificate chain, for servers that require one (with ``key``).
        key: PEM private key of ``cert``.
        server_name: Name checked against the server's certificate instead of the target's host.
    """

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> object:
        """``grpc.ssl_channel_credentials`` of these files.

        Raises:
            ValueError: a file cannot be read, or only one of ``cert`` and ``key`` is given.
        """
        import grpc

        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key must be given together")
        return grpc.ssl_channel_credentials(root_certificates=_read("--tls-ca", self.ca),
                                            private_key=_read("--tls-key", self.key) if self.key else None,
                                            certificate_chain=_read("--tls-cert", self.cert) if self.cert else None)


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


class Unhealthy(Exception):
    """The target answered wrongly or not at all; the message says how."""


def split_host_port(target: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into its parts.

    Raises:
        ValueError: ``target`` has no port, or the port is not an integer in 1..65535.
    """
    host, sep, port_text = target.rpartition(":")
    if not sep or not host:
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port of {target!r} must be an integer, got {port_text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port of {target!r} must be in 1..65535, got {port}")
    return host.strip("[]"), port


def check_http(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise ``Unhealthy`` unless ``url`` answers with a 2xx status within ``timeout_s`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unhealthy(f"{url} unreachable: {reason}") from None
    if not 200 <= status < 300:
        raise Unhealthy(f"{url} answered HTTP {status}")


def check_tcp(target: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise ``Unhealthy`` unless a TCP connection to ``HOST:PORT`` opens within ``timeout_s`` seconds."""
    host, port = split_host_port(target)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise Unhealthy(f"tcp {host}:{port} unreachable: {exc.strerror or exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_grpc(target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S, *, tls: Tls | None = None,
               liveness: bool = False) -> None:
    """Raise ``Unhealthy`` unless ``grpc.health.v1.Health/Check(service)`` at ``HOST:PORT`` says ``SERVING``.

    Args:
        target: ``HOST:PORT`` of the gRPC server.
        service: The service name to ask about; ``""`` is the server as a whole.
        timeout_s: Deadline of the call, seconds.
        tls: Speak TLS (None: plaintext).
        liveness: Any answer of the health service will do (``NOT_SERVING`` included).

    Raises:
        Unhealthy: no answer in time, or (readiness) not ``SERVING``.
        ValueError: a malformed target or an unreadable TLS file.
    """
    split_host_port(target)  # a clear error for a malformed target before grpc sees it
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.secure_channel(target, tls.credentials(), options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            raise Unhealthy(f"grpc {target}: {code}: {exc.details()}") from None
    if liveness:
        return
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise Unhealthy(f"grpc {target}: service {service!r} is {status}")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m services.healthcheck``."""
    parser = argparse.ArgumentParser(prog="python -m services.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="give up after this many seconds (default: %(default)s)")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    grpc_mode = modes.add_parser("grpc", help="grpc.health.v1 Check must answer SERVING")
    grpc_mode.add_argument("target", metavar="HOST:PORT")
    grpc_mode.add_argument("--service", default="", help="service name to check (default: the whole server)")
    grpc_mode.add_argument("--liveness", action="store_true",
                           help="any answer will do, NOT_SERVING included (a liveness probe: the server's threads "
                                "answer); without it the answer must be SERVING (readiness)")
    for flag, metavar, what in (("ca", "PEM", "CA of the server's certificate: speak TLS"),
                                ("cert", "PEM", "client certificate chain (with --tls-key)"),
                                ("key", "PEM", "client private key"),
                                ("server-name", "NAME", "name checked against the certificate instead of HOST")):
        env = f"{ENV_PREFIX}TLS_{flag.upper().replace('-', '_')}"
        grpc_mode.add_argument(f"--tls-{flag}", default=os.environ.get(env) or None, metavar=metavar,
                               help=f"{what} (default: ${env})")
    http_mode = modes.add_parser("http", help="GET must answer 2xx")
    http_mode.add_argument("target", metavar="URL")
    tcp_mode = modes.add_parser("tcp", help="a TCP connection must open")
    tcp_mode.add_argument("target", metavar="HOST:PORT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; return 0 when healthy, 1 when not, 2 for a malformed target."""
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        print(f"healthcheck: --timeout must be > 0 seconds, got {args.timeout!r}", file=sys.stderr)
        return 2
    try:
        if args.mode == "grpc":
            tls = (Tls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name) if args.tls_ca else None)
            if tls is None and (args.tls_cert or args.tls_key or args.tls_server_name):
                raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
            check_grpc(args.target, args.service, args.timeout, tls=tls, liveness=args.liveness)
        elif args.mode == "http":
            check_http(args.target, args.timeout)
        else:
            check_tcp(args.target, args.timeout)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
