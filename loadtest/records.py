"""Per-request records and the measurement window, written by the Locust processes, read back by the report.

Every Locust process that runs users (the single local process, or each worker) keeps one record per Generate call
from Locust's own ``request`` event (so the records and Locust's stats see the same calls) and writes them at exit
to ``requests-<role>-<pid>.json``. The process that drives the test (local or master) scrapes the exporter (and the
gateway's metrics) when the test starts and when it stops, and writes ``window.json``. Files from workers are read
back one by one, so a worker report that reaches the master too late is still counted here.

This module does not import Locust: the listeners take Locust's event arguments as keywords.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgediff.io import atomic_write_json
from edgediff.telemetry.counters import Scrape, scrape

logger = logging.getLogger(__name__)

WINDOW_FILE = "window.json"
REQUESTS_GLOB = "requests-*.json"
STATUS_OK = "OK"


@dataclass(frozen=True)
class RequestRecord:
    """One Generate call as Locust saw it.

    Attributes:
        start_unix_s: When it was sent, seconds since the epoch.
        latency_s: Until the response or the error, seconds.
        name: Its name in Locust's stats (``Generate onnx-fp32``).
        status: ``OK`` or the gRPC status name (``UNAUTHENTICATED``...).
        images: Images received (0 for a failure).
        variant: The variant asked for (``default``: the server's).
        steps: DDIM steps asked for.
        batch: Images asked for.
        response_bytes: Size of the response message.
        error: The failure's message, or ``None``.
    """

    start_unix_s: float
    latency_s: float
    name: str
    status: str
    images: int
    variant: str = ""
    steps: int = 0
    batch: int = 0
    response_bytes: int = 0
    error: str | None = None

    @property
    def end_unix_s(self) -> float:
        """When the response (or the error) arrived."""
        return self.start_unix_s + self.latency_s

    @property
    def ok(self) -> bool:
        """True for a successful call."""
        return self.status == STATUS_OK


@dataclass
class RecordBook:
    """The records of one Locust process.

    Args:
        role: ``local``, ``master`` or ``worker``.
        record_dir: Where ``write()`` puts the file; ``None`` keeps records in memory only.
    """

    role: str
    record_dir: Path | None = None
    requests: list[RequestRecord] = field(default_factory=list)
    cancelled: Counter[str] = field(default_factory=Counter)
    arrivals: Any = None
    """The process's open-loop schedule (``loadtest.arrivals.PoissonArrivals``), or ``None`` in a closed loop."""

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int = 0,
        exception: BaseException | None = None,
        context: dict[str, Any] | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        """Listener of Locust's ``request`` event."""
        context = context or {}
        latency_s = float(response_time) / 1000.0
        status = str(context.get("status") or (STATUS_OK if exception is None else "UNKNOWN"))
        self.requests.append(
            RequestRecord(
                start_unix_s=float(start_time) if start_time is not None else time.time() - latency_s,
                latency_s=latency_s,
                name=name,
                status=status,
                images=int(context.get("images", 0)) if exception is None else 0,
                variant=str(context.get("variant", "")),
                steps=int(context.get("steps", 0)),
                batch=int(context.get("batch", 0)),
                response_bytes=int(response_length or 0),
                error=None if exception is None else str(exception),
            )
        )

    def note_cancelled(self, name: str) -> None:
        """Count a call cancelled because Locust stopped its user (not a failure of the server)."""
        self.cancelled[name] += 1

    @property
    def path(self) -> Path | None:
        """The file ``write()`` writes."""
        return None if self.record_dir is None else self.record_dir / f"requests-{self.role}-{os.getpid()}.json"

    def write(self) -> Path | None:
        """Write the records atomically (nothing without a ``record_dir``)."""
        path = self.path
        if path is None:
            return None
        atomic_write_json(
            path,
            {
                "role": self.role,
                "pid": os.getpid(),
                "cancelled": dict(self.cancelled),
                "arrivals": None if self.arrivals is None else self.arrivals.to_dict(),
                "requests": [asdict(r) for r in self.requests],
            },
        )
        logger.info("wrote %d request records to %s", len(self.requests), path)
        return path


@dataclass
class WindowMarks:
    """The measurement window: scrapes of the exporter and the gateway when the test starts and when it stops.

    Args:
        record_dir: Where ``window.json`` is written.
        exporter_url: The exporter's metrics URL, or ``None``.
        gateway_metrics_url: The gateway's metrics URL, or ``None``.
    """

    record_dir: Path | None
    exporter_url: str | None = None
    gateway_metrics_url: str | None = None
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def mark(self, which: str) -> None:
        """Take the ``start`` or ``end`` mark: the time, and a scrape of each URL."""
        entry: dict[str, Any] = {"t_unix_s": time.time()}
        for key, url in (("exporter", self.exporter_url), ("gateway", self.gateway_metrics_url)):
            if url:
                scraped = scrape(url)
                if scraped.error:
                    logger.warning("%s mark: %s", which, scraped.error)
                entry[key] = scraped.to_dict()
        if "exporter" in entry:  # the window's edges are the instants the energy counter was read
            entry["t_unix_s"] = entry["exporter"]["t_unix_s"]
        self.marks[which] = entry
        if which == "end":
            self.write()

    def on_test_start(self, **_: Any) -> None:
        """Listener of Locust's ``test_start`` event (local or master process)."""
        if "start" not in self.marks:
            self.mark("start")

    def on_test_stop(self, **_: Any) -> None:
        """Listener of Locust's ``test_stop`` event (local or master process)."""
        if "start" in self.marks and "end" not in self.marks:
            self.mark("end")

    def write(self) -> Path | None:
        """Write ``window.json`` atomically."""
        if self.record_dir is None:
            return None
        return atomic_write_json(self.record_dir / WINDOW_FILE, self.marks)


# --- reading back ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """The window read back from ``window.json``."""

    start_unix_s: float
    end_unix_s: float
    exporter: tuple[Scrape, Scrape] | None = None
    gateway: tuple[Scrape, Scrape] | None = None

    @property
    def duration_s(self) -> float:
        """Window length, seconds."""
        return self.end_unix_s - self.start_unix_s


@dataclass(frozen=True)
class Arrivals:
    """An open loop's arrivals, summed over the processes.

    Attributes:
        rate_per_s: The offered rate (all processes), arrivals per second.
        sent: Arrivals sent on time.
        missed: Arrivals no user could send on time (every user busy, or the client starved of CPU): not sent.
        max_lag_s: The latest an arrival was sent after its time, seconds.
    """

    rate_per_s: float
    sent: int
    missed: int
    max_lag_s: float


@dataclass(frozen=True)
class RunRecords:
    """Everything the Locust processes wrote.

    Attributes:
        requests: Every call, from every process, sorted by start time.
        cancelled: Calls cancelled at stop, by name.
        window: The window marks, or ``None`` when the driving process did not write them.
        files: The request files read (one per process that ran users).
        arrivals: The open loop's arrivals, or ``None`` for a closed loop.
    """

    requests: list[RequestRecord]
    cancelled: dict[str, int]
    window: Window | None
    files: list[Path]
    arrivals: Arrivals | None = None


def read_window(path: Path) -> Window | None:
    """Read ``window.json``; ``None`` when it is missing or has no end mark."""
    if not path.is_file():
        return None
    marks = json.loads(path.read_text(encoding="utf-8"))
    if "start" not in marks or "end" not in marks:
        return None
    start, end = marks["start"], marks["end"]

    def pair(key: str) -> tuple[Scrape, Scrape] | None:
        if key in start and key in end:
            return Scrape.from_dict(start[key]), Scrape.from_dict(end[key])
        return None

    return Window(float(start["t_unix_s"]), float(end["t_unix_s"]), pair("exporter"), pair("gateway"))


def read_records(record_dir: Path) -> RunRecords:
    """Read every process's records and the window from ``record_dir``."""
    requests: list[RequestRecord] = []
    cancelled: Counter[str] = Counter()
    schedules: list[dict[str, Any]] = []
    files = sorted(record_dir.glob(REQUESTS_GLOB))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        requests.extend(RequestRecord(**r) for r in data.get("requests", []))
        cancelled.update(data.get("cancelled", {}))
        if data.get("arrivals"):
            schedules.append(data["arrivals"])
    requests.sort(key=lambda r: r.start_unix_s)
    arrivals = None
    if schedules:
        arrivals = Arrivals(rate_per_s=sum(float(s["rate_per_s"]) for s in schedules),
                            sent=sum(int(s["sent"]) for s in schedules),
                            missed=sum(int(s["missed"]) for s in schedules),
                            max_lag_s=max(float(s["max_lag_s"]) for s in schedules))
    return RunRecords(requests, dict(cancelled), read_window(record_dir / WINDOW_FILE), files, arrivals)
