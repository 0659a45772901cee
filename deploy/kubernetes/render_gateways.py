"""Render gateway-cpu.yaml, gateway-rtx.yaml and gateway-jetson.yaml from one template.

The three device classes differ only in image, default variants, Triton command, node placement, GPU resources and
memory request; everything else (probes, ports, security, volumes, Service, PDB, HPA) is the same text. Edit here,
run ``python deploy/kubernetes/render_gateways.py``, commit the YAML; ``tests/deploy/test_kubernetes.py`` fails when
the committed files differ from what this renders.
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
NL = "\n"
CONT = "\n                    "  # continuation indent of a long command list
CLASSES = {
    "cpu": dict(
        image="edgediff-cpu:0.1.0", variants="onnx-fp32", kind="Deployment",
        triton='["edgediff", "triton", "--repo", "/models", "--host", "0.0.0.0", "--http-port", "8000",'
               + CONT + '"--grpc-port", "8001", "--metrics-port", "8002", "--startup-timeout", "900"]',
        node="        edgediff.io/device-class: cpu", tolerations="", gpu="", runtime="",
        triton_mem="4Gi", triton_cpu="2",
        note="celebahq-256 onnx-fp32 peaks at 2.2-4.0 GB RSS in benchmarks/RESULTS.md (bench worker, fp32 modules)"),
    "rtx": dict(
        image="edgediff-rtx:0.1.0", variants="trt-fp16", kind="Deployment",
        triton='["tritonserver", "--model-repository=/models", "--http-port=8000", "--grpc-port=8001",'
               + CONT + '"--metrics-port=8002", "--allow-metrics=true", "--allow-gpu-metrics=true", '
               '"--exit-on-error=true"]',
        node='        nvidia.com/gpu.present: "true"',
        tolerations="      tolerations:\n        - key: nvidia.com/gpu\n          operator: Exists\n"
                    "          effect: NoSchedule\n",
        gpu="              nvidia.com/gpu: 1", runtime="", triton_mem="4Gi", triton_cpu="2",
        note="the engines live on the GPU; host memory is not measured on a GPU yet (benchmarks/RESULTS.md)"),
    "jetson": dict(
        image="edgediff-jetson:0.1.0", variants="trt-fp16", kind="DaemonSet",
        triton='["tritonserver", "--model-repository=/models", "--backend-directory=/opt/tritonserver/backends",'
               + CONT + '"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--allow-metrics=true",'
               + CONT + '"--exit-on-error=true"]',
        node="        edgediff.io/device-class: jetson\n        kubernetes.io/arch: arm64",
        tolerations="      tolerations:\n        - key: edgediff.io/device-class\n          operator: Equal\n"
                    "          value: jetson\n          effect: NoSchedule\n",
        gpu="", runtime="      runtimeClassName: nvidia\n", triton_mem="3Gi", triton_cpu="2",
        note="unified memory on a Jetson: the board's RAM is the GPU's"),
}

def render(name: str) -> str:
    """The manifest text of device class ``name``."""
    c = CLASSES[name]
    replicas = "  replicas: 1\n" if c["kind"] == "Deployment" else ""
    gpu_limits = f"            limits:{NL}{c['gpu']}{NL}" if c["gpu"] else ""
    init_limits = f"          resources:{NL}            limits:{NL}{c['gpu']}{NL}" if c["gpu"] else ""
    doc = f'''# edgediff on {name} nodes: Triton + the gRPC gateway in one pod (it reaches Triton on localhost),
# the model repository exported by an init container (`edgediff export --target {name}`), as compose.yaml's
# {name} profile does.
# Rendered by deploy/kubernetes/render_gateways.py (one template for the three device classes);
# tests/deploy/test_kubernetes.py checks them against the Kubernetes schemas, compose.yaml and edgediff/constants.py.
apiVersion: apps/v1
kind: {c["kind"]}
metadata:
  name: edgediff-{name}
  namespace: edgediff
  labels:
    app.kubernetes.io/name: edgediff
    app.kubernetes.io/component: gateway
    edgediff.io/device-class: {name}
spec:
{replicas}  selector:
    matchLabels:
      app.kubernetes.io/name: edgediff
      app.kubernetes.io/component: gateway
      edgediff.io/device-class: {name}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: edgediff
        app.kubernetes.io/component: gateway
        edgediff.io/device-class: {name}
      annotations:
        # without the Prometheus operator: scrape the gateway's metrics (Triton's :8002 is in the ServiceMonitor)
        prometheus.io/scrape: "true"
        prometheus.io/port: "9401"
        prometheus.io/path: /metrics
    spec:
      nodeSelector:
{c["node"]}
{c["tolerations"]}{c["runtime"]}      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
      initContainers:
        - name: export
          image: {c["image"]}
          command: ["edgediff", "export", "--target", "{name}", "--model", "$(EDGEDIFF_MODEL)", "--variants",
                    "$(EDGEDIFF_VARIANTS)", "--repo", "/models"]
          envFrom:
            - configMapRef:
                name: edgediff-settings
          env:
            - name: EDGEDIFF_VARIANTS
              value: {c["variants"]}
          volumeMounts:
            - {{name: models, mountPath: /models}}
            - {{name: cache, mountPath: /cache}}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: [ALL]
{init_limits}      containers:
        - name: triton
          image: {c["image"]}
          command: {c["triton"]}
          envFrom:
            - configMapRef:
                name: edgediff-settings
          ports:
            - {{name: triton-http, containerPort: 8000}}
            - {{name: triton-grpc, containerPort: 8001}}
            - {{name: triton-metrics, containerPort: 8002}}
          startupProbe:  # exporting + loading a model on a slow board takes minutes (compose: 600 s)
            httpGet: {{path: /v2/health/ready, port: triton-http}}
            periodSeconds: 10
            failureThreshold: 90
          readinessProbe:
            httpGet: {{path: /v2/health/ready, port: triton-http}}
            periodSeconds: 10
          livenessProbe:
            httpGet: {{path: /v2/health/live, port: triton-http}}
            periodSeconds: 10
            failureThreshold: 6
          # {c["note"]}
          resources:
            requests:
              memory: {c["triton_mem"]}
              cpu: "{c["triton_cpu"]}"
{gpu_limits}          volumeMounts:
            - {{name: models, mountPath: /models, readOnly: true}}
            - {{name: cache, mountPath: /cache}}
            - {{name: dshm, mountPath: /dev/shm}}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: [ALL]
        - name: gateway
          image: {c["image"]}
          command: ["edgediff", "serve", "--backend", "triton", "--model", "$(EDGEDIFF_MODEL)", "--host", "0.0.0.0",
                    "--port", "50051", "--metrics-port", "9401", "--triton-url", "127.0.0.1:8001"]
          envFrom:
            - configMapRef:
                name: edgediff-settings
          ports:
            - {{name: grpc, containerPort: 50051}}
            - {{name: gateway-metrics, containerPort: 9401}}
          # the standard gRPC health service of the gateway: SERVING once Triton serves a model
          readinessProbe:
            grpc: {{port: 50051}}
            periodSeconds: 5
          livenessProbe:
            tcpSocket: {{port: grpc}}
            periodSeconds: 10
            failureThreshold: 6
          resources:
            requests:
              memory: 256Mi
              cpu: 100m
          securityContext:
            allowPrivilegeEscalation: false
            capabilities:
              drop: [ALL]
      terminationGracePeriodSeconds: 45
      volumes:
        - {{name: models, emptyDir: {{}}}}
        - {{name: cache, emptyDir: {{}}}}
        - {{name: dshm, emptyDir: {{medium: Memory, sizeLimit: 1Gi}}}}
---
# Headless: the router's `--upstream dns:edgediff-{name}.edgediff.svc.cluster.local:50051` finds every pod.
apiVersion: v1
kind: Service
metadata:
  name: edgediff-{name}
  namespace: edgediff
  labels:
    app.kubernetes.io/name: edgediff
    app.kubernetes.io/component: gateway
    edgediff.io/device-class: {name}
spec:
  clusterIP: None
  selector:
    app.kubernetes.io/name: edgediff
    app.kubernetes.io/component: gateway
    edgediff.io/device-class: {name}
  ports:
    - {{name: grpc, port: 50051, targetPort: grpc}}
    - {{name: gateway-metrics, port: 9401, targetPort: gateway-metrics}}
    - {{name: triton-metrics, port: 8002, targetPort: triton-metrics}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: edgediff-{name}
  namespace: edgediff
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: edgediff
      app.kubernetes.io/component: gateway
      edgediff.io/device-class: {name}
'''
    if c["kind"] == "Deployment":
        doc += f'''---
# Scale on queue time vs compute time, as Triton's own Kubernetes guide does: the recording rule
# edgediff:queue_compute_ratio (monitoring/rules.yml), served per pod by prometheus-adapter (monitoring/).
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: edgediff-{name}
  namespace: edgediff
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: edgediff-{name}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Pods
      pods:
        metric:
          name: edgediff_queue_compute_ratio
        target:
          type: AverageValue
          averageValue: "1"
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
'''
    return doc


def main() -> int:
    """Write every class's file beside this script."""
    for name in CLASSES:
        (HERE / f"gateway-{name}.yaml").write_text(render(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
