"""Keep the server's insides out of what clients see, and clients' strings short in the server's log.

Messages are built for the operator (they name files to fix, the Triton or upstream address that failed); the copy a
client receives (``for_client``) has:

- every absolute path replaced by ``<path>`` (its last component kept, so ``/home/me/cache/unet.onnx`` becomes
  ``<path>/unet.onnx``);
- every network address replaced by ``<internal>``: the backend's own (``Backend.internal_addresses``: Triton's URL,
  the upstream gateways) and any IP literal, ``http(s)://`` URL or ``IP:PORT``;
- at most ``MAX_CLIENT_MESSAGE_CHARS`` characters.

The full message stays in the server's log, clipped to ``MAX_LOG_CHARS`` (``clip``): a client's 64 MiB field must
not become a 64 MiB log line. (Secrets on a recorded command line: ``edgediff.secrets``.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CLIENT_MESSAGE_CHARS = 1024
"""Longest error message sent to a client."""
MAX_LOG_CHARS = 2048
"""Longest message (or client-supplied string) written to a log line."""

_PATH = re.compile(r"(?<![\w.:/<>~-])(?:~/|/)(?:[\w.@+-]+/)+([\w.@+-]+)?")
"""An absolute (or ``~``) path of two or more components, not part of a URL (``http://``) or ``host:port/x``."""
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>),;]+", re.IGNORECASE)
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\w.])")
_IPV6_BRACKETED = re.compile(r"\[[0-9a-fA-F:.%\w]*:[0-9a-fA-F:.%\w]*\](?::\d{1,5})?")
_HOST_PORT = re.compile(r"(?<![\w.-])(?:localhost|[\w-]+(?:\.[\w-]+)+):\d{2,5}(?![\w.])")
"""``localhost:PORT`` or ``dotted.name:PORT`` (a bare ``word:NUMBER``, like ``dpmpp:10``, is left alone)."""


def redact_paths(text: str) -> str:
    """``text`` with local paths replaced by ``<path>/<last component>``."""
    return _PATH.sub(lambda m: f"<path>/{m.group(1)}" if m.group(1) else "<path>/", text)


def redact_addresses(text: str, addresses: Iterable[str] = ()) -> str:
    """``text`` with the given ``addresses`` and any URL, IP literal or ``host:port`` replaced by ``<internal>``."""
    for address in sorted({a for a in addresses if a}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.-]){re.escape(address)}(?![\w-])", "<internal>", text)
    for pattern in (_URL, _IPV6_BRACKETED, _IPV4, _HOST_PORT):
        text = pattern.sub("<internal>", text)
    return text


def clip(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all)"


def for_client(text: str, addresses: Iterable[str] = ()) -> str:
    """The copy of an operator's message a client may see: no paths, no internal addresses, bounded length."""
    return clip(redact_addresses(redact_paths(text), addresses), MAX_CLIENT_MESSAGE_CHARS)

