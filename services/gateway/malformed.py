"""Bytes that are not the method's request message answer INVALID_ARGUMENT, not gRPC's INTERNAL.

gRPC Python answers ``INTERNAL: Exception deserializing request!`` when a request does not parse. This interceptor
(innermost, so the metrics and auth interceptors see its handler) gives every unary-request method a deserializer that
never raises: a message that does not parse becomes a ``MalformedRequest`` and the call ends with INVALID_ARGUMENT
naming the expected message type.

A server-streaming handler marked ``experimental_non_blocking`` (grpc-health's ``Watch``) stays non-blocking: it
sends through gRPC's callback and holds no worker thread while its stream is open. Wrapping it in a plain generator
would pin one thread per idle stream, and a few dozen idle Watch streams (open without a token) would starve
every other call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class MalformedRequest:
    """Stands in for a request whose bytes did not parse.

    Attributes:
        why: The parser's error (class name and message, shortened).
    """

    def __init__(self, why: str) -> None:
        self.why = why


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError and friends: any failure means malformed bytes
            return MalformedRequest(f"{type(exc).__name__}: {str(exc)[:120]}")

    return parse


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Answers INVALID_ARGUMENT to unary requests whose bytes are not the method's message type."""

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        """Wrap unary-request handlers with a non-raising deserializer; others pass through."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method

        def refuse(request: MalformedRequest, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request to {method} is not a valid message of its type ({request.why})")

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, MalformedRequest):
                    refuse(request, context)
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=_safe(handler.request_deserializer),
                                                       response_serializer=handler.response_serializer)
        if handler.unary_stream is not None and getattr(handler.unary_stream, "experimental_non_blocking", False):
            return _non_blocking(handler, refuse)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, MalformedRequest):
                    refuse(request, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_safe(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler


def _non_blocking(handler: Any, refuse: Callable[[MalformedRequest, grpc.ServicerContext], None]) -> Any:
    """``handler`` (a non-blocking server-streaming one) with the safe deserializer, still non-blocking."""
    inner = handler.unary_stream

    def stream(request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
        if isinstance(request, MalformedRequest):
            refuse(request, context)
        return inner(request, context, send_response_callback)

    stream.experimental_non_blocking = True  # type: ignore[attr-defined]
    stream.experimental_thread_pool = getattr(inner, "experimental_thread_pool", None)  # type: ignore[attr-defined]
    return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=_safe(handler.request_deserializer),
                                                response_serializer=handler.response_serializer)
