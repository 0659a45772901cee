"""Optional bearer-token authentication: metadata ``authorization: Bearer <token>``, else UNAUTHENTICATED.

The token is compared in constant time (over SHA-256 digests, so the length does not leak either) and never logged,
printed or put in an error message. Health checks stay open so that probes (compose, Kubernetes) need no secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from edgediff.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        InvalidArgumentError: the file cannot be read or is empty (the message never contains the file's content).
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"--token-file: cannot read {path}: {exc.__class__.__name__}") from None
    if not token:
        raise InvalidArgumentError(f"--token-file: {path} is empty")
    if any(c.isspace() for c in token):
        raise InvalidArgumentError(f"--token-file: the token in {path} contains whitespace")
    return token


def resolve_token(token_file: str | Path | None, env_name: str) -> str | None:
    """The token in ``token_file`` when given, else in the environment variable ``env_name``, else None.

    Tokens never come from the command line, where every user of the machine can read them (``ps``).

    Raises:
        InvalidArgumentError: the file cannot be read or holds no token (``read_token_file``), or the variable
            holds whitespace.
    """
    if token_file:
        return read_token_file(token_file)
    token = os.environ.get(env_name, "").strip()
    if any(c.isspace() for c in token):
        raise InvalidArgumentError(f"${env_name} contains whitespace")
    return token or None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def _deny_handler(handler: Any, message: str) -> Any:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""

    def deny_unary(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def deny_stream(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    kinds: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, deny_unary),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, deny_unary),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, deny_stream),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, deny_stream),
    }
    for attr, (make, behaviour) in kinds.items():
        if getattr(handler, attr) is not None:
            return make(behaviour, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not ``Bearer <token>``.

    Args:
        token: The expected token.
        open_prefixes: Method prefixes served without a token (health checks by default).
    """

    def __init__(self, token: str, open_prefixes: Sequence[str] = (HEALTH_METHOD_PREFIX,)) -> None:
        if not token:
            raise InvalidArgumentError("the bearer token must not be empty")
        self._expected = _digest(BEARER_PREFIX + token)
        self._open_prefixes = tuple(open_prefixes)

    def check(self, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
        """None when the metadata carries the right token, else the reason (which never contains a token)."""
        values = [v for k, v in (metadata or ()) if k.lower() == AUTH_METADATA_KEY]
        if not values:
            return "missing bearer token: send metadata 'authorization: Bearer <token>'"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not hmac.compare_digest(_digest(value), self._expected):
            return "invalid bearer token"
        return None

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        """Pass authorised calls on; answer the others UNAUTHENTICATED."""
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open_prefixes):
            return handler
        reason = self.check(handler_call_details.invocation_metadata)
        if reason is None:
            return handler
        logger.info("refused %s: %s", handler_call_details.method, reason)
        return _deny_handler(handler, reason)
