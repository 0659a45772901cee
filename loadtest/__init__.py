"""Load tests of the gRPC gateway with Locust: latency percentiles, throughput and energy per image.

* ``locustfile.py``: the Locust user that calls ``edgediff.v1.Generator/Generate`` (run by ``locust -f``);
* ``grpc_user.py``: a thin abstract gRPC ``User`` whose interceptor fires Locust's ``request`` event;
* ``mix.py``: the request mix (variants, steps, batch, eta, seeds) from options or environment variables;
* ``records.py``: per-request records and the measurement window, written by the Locust processes;
* ``runner.py``: starts Locust headless (one process, or a master and K workers) with bounded timeouts;
* ``summary.py``: counts, latency percentiles and throughput from the records;
* ``energy.py``: energy per image from two scrapes of the exporter, or from a Prometheus query over the window;
* ``report.py``: ``loadtest.json``, ``loadtest.md`` and the timeline PNG;
* ``command.py``: ``edgediff loadtest``.

Only ``locustfile.py`` and ``grpc_user.py`` import Locust (which monkey-patches the process with gevent); the rest is
plain Python the CLI process can import.
"""
