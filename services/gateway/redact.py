"""Keep the server's filesystem out of what clients see: error messages and variant reasons lose local paths.

Messages are built for the operator (they name files to fix); the copy a client receives has every absolute path
replaced by ``<path>`` (its last component kept, so ``/home/me/cache/unet.onnx`` becomes ``<path>/unet.onnx``).
The full message stays in the server's log.
"""

from __future__ import annotations

import re

_PATH = re.compile(r"(?<![\w.:/<>~-])(?:~/|/)(?:[\w.@+-]+/)+([\w.@+-]+)?")
"""An absolute (or ``~``) path of two or more components, not part of a URL (``http://``) or ``host:port/x``."""


def redact_paths(text: str) -> str:
    """``text`` with local paths replaced by ``<path>/<last component>``."""
    return _PATH.sub(lambda m: f"<path>/{m.group(1)}" if m.group(1) else "<path>/", text)
