"""Load tests of the gRPC gateway with Locust: latency percentiles, throughput and energy per image.

* ``locustfile.py``: the Locust user that calls ``edgediff.v1.Generator/Generate`` (run by ``locust -f``);
* ``grpc_user.py``: a thin abstract gRPC ``User`` whose interceptor fires Locust's ``request`` event;
* ``arrivals.py``: the open loop's Poisson arrival schedule (``--rate``), with the arrivals it missed;
* ``mix.py``: the request mix (variants, steps, batch, eta, seeds) from options or environment variables;
* ``records.py``: per-request records and the measurement window, written by the Locust processes;
* ``runner.py``: starts Locust headless (one process, or a master and K workers) with bounded timeouts;
* ``summary.py``: counts, latency percentiles, throughput and the rolling-rate timeline from the records;
* ``energy.py``: energy per image from two scrapes of the exporter, or from a Prometheus query over the window;
* ``report.py``: ``loadtest.json``, ``loadtest.md`` and the timeline PNG;
* ``session.py``: one load test from config to verdict (images counted, energy method, pass/fail);
* ``sweep.py``: a ladder of load tests (``--sweep``), the saturation throughput and the throughput-latency plot.

``edgediff loadtest`` (``cli/loadtest.py``) only parses its flags into a ``session.LoadTestConfig`` and dispatches.

Only ``locustfile.py`` and ``grpc_user.py`` import Locust (which monkey-patches the process with gevent); the rest is
plain Python the CLI process can import.
"""
