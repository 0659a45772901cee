"""edgediff sends no usage data on anyone's behalf, and no vendor library does it through edgediff unasked.

OpenVINO's tools (NNCF at import, model conversion at ``convert_model``) report usage to Google Analytics through
``openvino_telemetry`` unless the user has opted out: for them a missing consent file means yes (OpenVINO's
telemetry page: "collected by default ... stop data collection anytime by running ``opt_in_out --opt_out``"). They
also write a client-ID file under ``~/intel``, and the sender forks a process from a worker thread; offline, that
child can deadlock in ``getaddrinfo`` and the interpreter then waits for it at exit forever (seen: ``edgediff tune``
of a fresh machine, after its int8 calibration, never returned).

``decline_unasked_usage_reporting`` makes this process treat "no consent file" as "declined". A choice the user
made with ``opt_in_out`` (the consent file) is kept as it is, and nothing is written to disk. ``require`` calls it
before importing ``openvino`` or ``nncf``, the only way edgediff imports them, so every process that may run those
tools (workers, the prepare child, Triton's part models) declines too.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any


@functools.cache
def decline_unasked_usage_reporting() -> None:
    """Treat a missing ``openvino_telemetry`` consent file as "declined" in this process (once).

    A no-op where ``openvino_telemetry`` is not installed: nothing can report.
    """
    if importlib.util.find_spec("openvino_telemetry") is None:
        return
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    original = OptInChecker.check

    def check(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        return ConsentCheckResult.DECLINED if result == ConsentCheckResult.NO_FILE else result

    OptInChecker.check = check
