"""Names, ports and metric names shared by the code and the deployment files.

This is the one place these values live. ``compose.yaml``, ``docker/prometheus/prometheus.yml`` and the Grafana
dashboards are checked against this module by the tests, so a rename here that is not carried over there fails CI.
"""

from __future__ import annotations

# --- network ports (defaults; every CLI command takes a flag to override them) ---------------------------------
GATEWAY_GRPC_PORT = 50051
"""gRPC ``edgediff.v1.Generator`` gateway."""
GATEWAY_METRICS_PORT = 9401
"""Prometheus metrics of the gateway process."""
EXPORTER_PORT = 9400
"""Prometheus telemetry exporter (power, energy, memory)."""
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
LOCUST_WEB_PORT = 8089
LOCUST_MASTER_PORT = 5557

DEFAULT_HOST = "127.0.0.1"
"""Every server binds loopback unless told otherwise."""

# --- Triton model names ------------------------------------------------------------------------------------------
UNET_MODEL_PREFIX = "unet_"
VQDEC_MODEL_PREFIX = "vqdec_"
PIPELINE_MODEL_PREFIX = "ldm_"


def triton_model_name(prefix: str, variant: str) -> str:
    """Return the Triton model name for a variant, e.g. ``("ldm_", "onnx-fp32") -> "ldm_onnx_fp32"``.

    Args:
        prefix: One of ``UNET_MODEL_PREFIX``, ``VQDEC_MODEL_PREFIX``, ``PIPELINE_MODEL_PREFIX``.
        variant: A variant name from the registry (``torch-fp32``, ``onnx-fp32``, ...).
    """
    return prefix + variant.replace("-", "_")


# Tensor names of the Triton models (also the ONNX graph's input/output names).
UNET_INPUT_SAMPLE = "sample"
UNET_INPUT_TIMESTEP = "timestep"
UNET_OUTPUT = "noise_pred"
VQDEC_INPUT = "latents"
VQDEC_OUTPUT = "image"
LDM_INPUT_SEED = "SEED"
LDM_INPUT_STEPS = "STEPS"
LDM_INPUT_ETA = "ETA"
LDM_INPUT_BATCH = "BATCH"
LDM_INPUT_SCHEDULER = "SCHEDULER"
LDM_OUTPUT_IMAGE = "IMAGE"
LDM_OUTPUT_TIMINGS = "TIMINGS"
LDM_TIMINGS_FIELDS = ("denoise_s", "decode_s", "total_s")
"""Order of the values in the ``TIMINGS`` output of ``ldm_<variant>`` (seconds, FP64)."""
SERVE_MAX_BATCH = 4
"""Largest ``batch_size`` one served request may ask: the gateway's ``--max-batch`` default and the ``max_batch`` of
every exported ``ldm_<variant>`` model (Triton refuses a larger ``BATCH``), so the two never disagree."""

# --- Prometheus metric names -------------------------------------------------------------------------------------
METRIC_PREFIX = "edgediff_"
# telemetry exporter
METRIC_POWER_WATTS = "edgediff_power_watts"
METRIC_ENERGY_JOULES_TOTAL = "edgediff_energy_joules_total"
METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL = "edgediff_energy_unmeasured_seconds_total"
METRIC_IDLE_POWER_WATTS = "edgediff_idle_power_watts"
METRIC_MEMORY_USED_BYTES = "edgediff_memory_used_bytes"
METRIC_SENSOR_UP = "edgediff_sensor_up"
METRIC_BUILD_INFO = "edgediff_build_info"
# gateway
METRIC_GATEWAY_REQUESTS_TOTAL = "edgediff_gateway_requests_total"
METRIC_GATEWAY_REQUEST_SECONDS = "edgediff_gateway_request_duration_seconds"
METRIC_GATEWAY_STAGE_SECONDS = "edgediff_gateway_stage_duration_seconds"
METRIC_GATEWAY_IMAGES_TOTAL = "edgediff_gateway_images_total"
METRIC_GATEWAY_IN_FLIGHT = "edgediff_gateway_in_flight_requests"
METRIC_GATEWAY_QUEUE_DEPTH = "edgediff_gateway_queue_depth"
METRIC_GATEWAY_CAPACITY = "edgediff_gateway_capacity_requests"
"""Gauge: the in-flight limit (generations at once) the gateway admits now (``--max-concurrency``, by default the
backend's capacity); the HPA's saturation ratio divides in-flight + queued by it."""
METRIC_GATEWAY_BACKEND_WAIT_SECONDS = "edgediff_gateway_backend_wait_seconds"
# fleet router (``edgediff serve --backend fleet``): served with the gateway's metrics; label ``upstream``
METRIC_FLEET_REQUESTS_TOTAL = "edgediff_fleet_requests_total"
"""Counter, labels ``upstream`` and ``outcome`` (``ok``, ``failed_over``, ``error``)."""
METRIC_FLEET_UPSTREAM_UP = "edgediff_fleet_upstream_up"
METRIC_FLEET_UPSTREAM_LATENCY_SECONDS = "edgediff_fleet_upstream_latency_seconds"
"""Gauge, labels ``upstream`` and ``variant``: the learned seconds per image."""
METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES = "edgediff_fleet_upstream_energy_per_image_joules"
FLEET_METRIC_LABELS = {METRIC_FLEET_REQUESTS_TOTAL: ("upstream", "outcome"), METRIC_FLEET_UPSTREAM_UP: ("upstream",),
                       METRIC_FLEET_UPSTREAM_LATENCY_SECONDS: ("upstream", "variant"),
                       METRIC_FLEET_UPSTREAM_ENERGY_PER_IMAGE_JOULES: ("upstream",)}
"""Labels of the router's metrics (the dashboard tests check queries against them)."""
# a DeepCache unet_<variant> model: Triton custom metrics, served on Triton's metrics port
METRIC_DEEPCACHE_EVALUATIONS_TOTAL = "edgediff_deepcache_evaluations_total"
"""Counter, labels ``model`` and ``kind`` (``full``: the whole UNet, refreshing the cached feature; ``shallow``: only
the shallow branch over it)."""
METRIC_DEEPCACHE_OPEN_SEQUENCES = "edgediff_deepcache_open_sequences"
"""Gauge, label ``model``: images whose deep feature the model holds now."""
DEEPCACHE_METRIC_LABELS = {METRIC_DEEPCACHE_EVALUATIONS_TOTAL: ("model", "kind"),
                           METRIC_DEEPCACHE_OPEN_SEQUENCES: ("model",)}
"""Labels of the DeepCache model's metrics (the dashboard tests check queries against them)."""

# --- environment variables ---------------------------------------------------------------------------------------
ENV_WEIGHTS = "EDGEDIFF_WEIGHTS"
"""A diffusers-format weights folder used when ``--weights`` is not given."""
ENV_CACHE_DIR = "EDGEDIFF_CACHE_DIR"
"""Where exported artifacts are cached by content hash (default ``~/.cache/edgediff``)."""
ENV_THREADS = "EDGEDIFF_THREADS"
"""Intra-op threads for every backend (default: physical cores)."""
ENV_GATEWAY_TOKEN = "EDGEDIFF_GATEWAY_TOKEN"
"""Bearer token a client command (``edgediff bench --through gateway``) sends when no ``--token-file`` is given."""

# --- load test (loadtest/): the request mix and the run's plumbing, read by loadtest/locustfile.py ---------------
ENV_LOADTEST_VARIANTS = "EDGEDIFF_LOADTEST_VARIANTS"
"""Weighted variants, e.g. ``onnx-fp32:3,torch-fp32:1`` (``default`` = the server's default variant)."""
ENV_LOADTEST_STEPS = "EDGEDIFF_LOADTEST_STEPS"
"""Weighted DDIM steps, e.g. ``20`` or ``10:1,20:3``."""
ENV_LOADTEST_BATCH = "EDGEDIFF_LOADTEST_BATCH"
"""Weighted images per request, e.g. ``1`` or ``1:3,4:1``."""
ENV_LOADTEST_ETA = "EDGEDIFF_LOADTEST_ETA"
"""DDIM eta of every request, 0..1."""
ENV_LOADTEST_SEEDS = "EDGEDIFF_LOADTEST_SEEDS"
"""``random``, one seed ``N``, or a range ``A-B`` drawn uniformly."""
ENV_LOADTEST_TOKEN = "EDGEDIFF_LOADTEST_TOKEN"
"""Bearer token sent to a gateway that requires one."""
ENV_LOADTEST_TIMEOUT = "EDGEDIFF_LOADTEST_TIMEOUT"
"""Deadline of one Generate call, seconds."""
ENV_LOADTEST_RECORD_DIR = "EDGEDIFF_LOADTEST_RECORD_DIR"
"""Folder where each Locust process writes its per-request records and the master its window marks."""
ENV_LOADTEST_EXPORTER_URL = "EDGEDIFF_LOADTEST_EXPORTER_URL"
"""Telemetry exporter metrics URL scraped at the start and the end of the load."""
ENV_LOADTEST_GATEWAY_METRICS_URL = "EDGEDIFF_LOADTEST_GATEWAY_METRICS_URL"
"""Gateway metrics URL scraped at the same instants (images served)."""
ENV_LOADTEST_RATE = "EDGEDIFF_LOADTEST_RATE"
"""Open loop: Poisson arrivals per second of one Locust process (0 or unset: closed loop)."""

# --- performance: DeepCache, int8, low memory (issue 9) ---------------------------------------------------------
UNET_FEATURE = "deep_feature"
"""DeepCache: the cached deep feature, an output of the ``unet-full`` part and an input of ``unet-shallow``."""

# --- exporters: DeepCache variants served by Triton (one stateful unet_<variant> model per variant) --------------
DEEPCACHE_SEQUENCE_IDLE_S = 600
"""A DeepCache image (one Triton sequence) idle this long is ended by Triton's sequence batcher and its cached feature
dropped by the model (only happens when a pipeline model dies mid-image: a finished or failed image closes its
sequence itself). Generous because the images of a batch take turns: each step, an image waits for all the others'
UNet evaluations (64 images x a full celebahq-256 step: 17 s on a 2-core Zen 4, minutes on a slow board)."""

# --- deployment (docker/, compose.yaml, Grafana): Triton's own metrics the dashboards use -------------------------
TRITON_METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
"""Per-model metrics Triton serves on ``TRITON_METRICS_PORT`` (labels ``model``, ``version``; durations are
cumulative microseconds). The allow-list the dashboard is checked against; a test scrapes the bundled Triton (2.51)
to confirm each name."""
