"""InferenceService: a model server as Deployment + ClusterIP Service +
HorizontalPodAutoscaler + PodDisruptionBudget, on GPUs or CPUs.

`runtime` says which server (docs/serving.md):
- `mlplatform`: the platform's runtime server (KServe Open Inference Protocol
  v2 and v1, dynamic batching);
- `vllm`: vLLM's OpenAI-compatible server (vllm/vllm-openai, pinned), the
  model's GPUs as tensor parallelism;
- `triton`: NVIDIA Triton Inference Server (HTTP, gRPC and metrics ports);
- `custom`: an own image with declared ports, probes, metrics endpoint and
  HPA metric.
The Service, the network openings, the monitors and the adapter rules follow
the ports and metrics the runtime declares; latency and error alerts exist only
for runtimes whose metric names the platform knows.

- Probes: a startup probe on readiness gives model loading and warm-up up to
  `startupSeconds` before liveness applies; for the runtime server readiness is
  `/v2/health/ready` (true only once the model is loaded and warmed),
  liveness `/v2/health/live`; each preset has its own.
- Rolling updates never drop below the current capacity (maxUnavailable 0);
  on SIGTERM the server stops reporting ready and drains in-flight requests;
  a preStop sleep covers the time endpoints take to drop the pod.
- HPA (autoscaling/v2) owns the replica count (the Deployment does not set
  it): CPU and/or memory utilisation and optionally a per-pod custom metric
  (served by a Prometheus adapter); scale-up fast, scale-down slow unless
  `behavior` says otherwise.
- The model comes from object storage (an init container with the workload's
  IRSA role copies it to an emptyDir) or from a PVC.
- Canary: a second Deployment (`<name>-canary`, its own image or model) behind
  the same Service. A ClusterIP Service spreads connections over ready pods, so
  the canary's share is its share of pods: `weight` percent of the pods at
  minReplicas. Exact weighted routing needs a gateway or mesh.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import AfterValidator, Field, model_validator

from infra import catalog, meta, pod
from infra.config_types import DnsLabel, FieldProblems, Loc, PriorityClassName, Quantity, _Model
from workloads import common, metric_catalog
from workloads.metric_catalog import HpaMetric
from workloads.runtime import contract

HTTP_PORT_NAME = "http"
SERVICE_PORT = 80
TRACK_LABEL = f"{catalog.LABEL_PREFIX}/track"
RUNTIME_LABEL = f"{catalog.LABEL_PREFIX}/serving-runtime"
PROTOCOL = "kserve-v2"  # and v1; see workloads/runtime/README.md

Runtime = Literal["mlplatform", "vllm", "triton", "custom"]
RUNTIMES: tuple[str, ...] = ("mlplatform", "vllm", "triton", "custom")
# What each runtime's clients speak (the `inferenceEndpoints` output).
PROTOCOLS: dict[str, str] = {
    "mlplatform": PROTOCOL,
    "vllm": "openai",
    "triton": "kserve-v2",
    "custom": "custom",
}

# vLLM's OpenAI-compatible server, v0.29.0 (the newest release, September 2026),
# by the digest of Docker Hub's multi-arch manifest list for the tag, as public
# projects pinning that release record it (and the same digest for the tag in
# several independent records).
VLLM_IMAGE = (
    "vllm/vllm-openai:v0.29.0"
    "@sha256:c2914767605584b6d8f45686b82de173ecc99e781897aa3d0a66dacd72c51ae1"
)
VLLM_PORT = 8000
# NVIDIA Triton Inference Server 26.08 (Triton 2.72), by its NGC digest as public
# projects pinning the release record it. (26.09 exists; no digest for it could
# be confirmed.)
TRITON_IMAGE = (
    "nvcr.io/nvidia/tritonserver:26.08-py3"
    "@sha256:9185ba5b33d2c85c9204b208957b4bbfc6b2b89066efc9192e0f60c2ab58cec0"
)
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
# The scratch emptyDir (/tmp: HOME and caches) a vLLM pod gets unless `scratch`
# says otherwise: torch.compile, Triton kernel and FlashInfer caches.
VLLM_SCRATCH = "10Gi"
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SERIES_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _port_name(value: str) -> str:
    if len(value) > 15 or not _PORT_NAME.match(value) or "--" in value:
        raise ValueError(
            f"{value!r} is not a port name (IANA service name: at most 15 lowercase letters, "
            "digits and '-', at least one letter)"
        )
    return value


PortName = Annotated[str, AfterValidator(_port_name)]


class ServingSettings(_Model):
    """How inference services are reached."""

    gateway_namespace: DnsLabel = Field(
        "gateway",
        description="Namespace of the ingress gateway (Envoy Gateway, Istio, NGINX, ...): "
        "inference services admit traffic from it.",
    )


class CustomMetric(_Model):
    """A per-pod metric for the HPA, served by the Prometheus adapter. Every name
    an HPA asks for has an adapter rule, or the config is rejected."""

    name: str | None = Field(
        None,
        pattern=_METRIC_NAME.pattern,
        description="Pods metric name as the custom metrics API serves it. Default: the "
        "runtime's queue metric (`mlserve_inflight_requests`, `vllm_num_requests_waiting`, "
        "`nv_inference_pending_request_count`); required for runtime `custom`. Known "
        "runtimes take only their own metrics (docs/serving.md).",
    )
    target_average_value: str = Field("8", description="Scale to keep the per-pod average at this.")
    series: str | None = Field(
        None,
        pattern=_SERIES_NAME.pattern,
        description="Runtime `custom`: the Prometheus series the server exports (a histogram's "
        "base name). Default: `name`.",
    )
    type: Literal["gauge", "counter", "histogram"] | None = Field(
        None,
        description="Runtime `custom` (required there): how the adapter computes the metric "
        "from the series: `gauge` as is, `counter` as a per-second rate, `histogram` as the "
        "average observation (sum / count).",
    )


class ScalingPolicy(_Model):
    """One HPA scaling policy: at most `value` pods or percent per `periodSeconds`."""

    type: Literal["Pods", "Percent"] = Field(description="`Pods` or `Percent`.")
    value: int = Field(ge=1, description="Pods or percent of the current replicas.")
    period_seconds: int = Field(ge=1, le=1800, description="Window the value applies to.")


class ScalingRules(_Model):
    """How fast the HPA scales in one direction; unset fields keep the platform's."""

    stabilization_window_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Act on the extreme recommendation of this window. Platform: 0 up, 300 down.",
    )
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(
        None,
        description="Which policy wins (`Disabled` turns this direction off). Platform: Max.",
    )
    policies: list[ScalingPolicy] | None = Field(
        None,
        min_length=1,
        description="Platform: up, 100 percent or 4 pods a minute; down, 10 percent a minute.",
    )


class HpaBehavior(_Model):
    """HPA `behavior`, direction by direction."""

    scale_up: ScalingRules = Field(default_factory=ScalingRules, description="Scaling up.")
    scale_down: ScalingRules = Field(default_factory=ScalingRules, description="Scaling down.")


# Up: react at once, double or add 4 pods a minute, whichever is more. Down: only
# after 5 minutes of lower load, 10 percent a minute; a GPU replica takes
# minutes to come back.
DEFAULT_BEHAVIOR: dict[str, dict[str, Any]] = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 60},
            {"type": "Pods", "value": 4, "periodSeconds": 60},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}],
    },
}


def hpa_behavior(behavior: HpaBehavior) -> dict[str, Any]:
    """The platform's behavior with the spec's overrides."""
    out: dict[str, Any] = {}
    for key, rules in (("scaleUp", behavior.scale_up), ("scaleDown", behavior.scale_down)):
        merged = dict(DEFAULT_BEHAVIOR[key])
        if rules.stabilization_window_seconds is not None:
            merged["stabilizationWindowSeconds"] = rules.stabilization_window_seconds
        if rules.select_policy is not None:
            merged["selectPolicy"] = rules.select_policy
        if rules.policies is not None:
            merged["policies"] = [
                {"type": p.type, "value": p.value, "periodSeconds": p.period_seconds}
                for p in rules.policies
            ]
        out[key] = merged
    return out


class Canary(_Model):
    """A second version receiving a share of the traffic."""

    weight: int = Field(ge=1, le=50, description="Percent of pods (and so of traffic), 1-50.")
    image: common.ImageRef | None = Field(
        None, description="Canary image. Default: the stable one."
    )
    model_uri: str | None = Field(
        None, description="Canary model (s3://). Default: the stable one."
    )

    @model_validator(mode="after")
    def _changes_something(self) -> Canary:
        if self.image is None and self.model_uri is None:
            raise FieldProblems([((), "a canary needs its own `image` or `modelUri`")])
        if self.model_uri is not None and not self.model_uri.startswith("s3://"):
            raise FieldProblems([(("modelUri",), f"{self.model_uri!r} is not an s3:// URI")])
        return self


class ServerPort(_Model):
    """A port the server listens on."""

    name: PortName = Field(description="Port name (at most 15 characters), e.g. `http`, `grpc`.")
    port: int = Field(ge=1024, le=65535, description="Port number (non-root, so >= 1024).")
    protocol: Literal["http", "grpc"] = Field(
        "http", description="`http` (HTTP/1.1) or `grpc` (HTTP/2): the Service's appProtocol."
    )


class ProbeSpec(_Model):
    """One probe: exactly one of `path` (HTTP GET), `grpc` (gRPC health checking) or
    `tcp` (a TCP connect)."""

    path: str | None = Field(None, pattern=r"^/", description="HTTP GET on this path.")
    grpc: bool = Field(False, description="gRPC health checking (grpc.health.v1) instead.")
    grpc_service: str | None = Field(
        None, description="With `grpc`: the service name to ask about. Default: the server's."
    )
    tcp: bool = Field(False, description="A TCP connect instead.")
    port: PortName | None = Field(
        None,
        description="Name of one of `ports`. Default: the first port (for `grpc`, the first "
        "gRPC port).",
    )
    period_seconds: int = Field(10, ge=1, le=300, description="Seconds between probes.")
    timeout_seconds: int = Field(2, ge=1, le=60, description="Seconds before a probe fails.")
    failure_threshold: int | None = Field(
        None,
        ge=1,
        description="Failures in a row before acting. Default: 3 (a startup probe: "
        "`startupSeconds` / `periodSeconds`).",
    )
    initial_delay_seconds: int = Field(0, ge=0, le=3600, description="Wait before the first.")

    @model_validator(mode="after")
    def _one_check(self) -> ProbeSpec:
        if sum((self.path is not None, self.grpc, self.tcp)) != 1:
            raise FieldProblems([((), "set exactly one of `path`, `grpc: true` or `tcp: true`")])
        if self.grpc_service is not None and not self.grpc:
            raise FieldProblems([(("grpcService",), "only with `grpc: true`")])
        return self


class ServerProbes(_Model):
    """The server's probes. Without `startup`, the readiness check is the startup
    probe, allowed `startupSeconds` to pass."""

    startup: ProbeSpec | None = Field(None, description="Startup probe. Default: readiness's.")
    readiness: ProbeSpec = Field(description="Readiness probe (required).")
    liveness: ProbeSpec = Field(description="Liveness probe (required).")


class MetricsEndpoint(_Model):
    """Where Prometheus scrapes the server."""

    port: PortName = Field(description="Name of one of `ports`.")
    path: str = Field("/metrics", pattern=r"^/", description="HTTP path.")


class VllmSettings(_Model):
    """vLLM engine settings (runtime `vllm`); anything else goes in `args`."""

    max_model_len: int = Field(
        8192,
        ge=256,
        description="`--max-model-len`: the longest prompt + output. vLLM's default is the "
        "model's own maximum, whose KV cache often does not fit: it then refuses to start.",
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0.1,
        le=0.98,
        description="`--gpu-memory-utilization`: the share of each GPU's memory vLLM takes "
        "(weights, activations, KV cache).",
    )
    time_to_first_token_slo_ms: float = Field(
        2000, gt=0, description="p95 time-to-first-token objective (alert after 10 minutes)."
    )
    inter_token_latency_slo_ms: float = Field(
        100, gt=0, description="p95 inter-token latency objective (alert after 10 minutes)."
    )


# Ports, probes and metrics of the runtimes the platform knows.
_PRESET_PORTS: dict[str, tuple[ServerPort, ...]] = {
    "mlplatform": (ServerPort(name=HTTP_PORT_NAME, port=contract.SERVE_PORT),),
    "vllm": (ServerPort(name=HTTP_PORT_NAME, port=VLLM_PORT),),
    "triton": (
        ServerPort(name=HTTP_PORT_NAME, port=TRITON_HTTP_PORT),
        ServerPort(name="grpc", port=TRITON_GRPC_PORT, protocol="grpc"),
        ServerPort(name="metrics", port=TRITON_METRICS_PORT),
    ),
}
_PRESET_PATHS: dict[str, tuple[str, str]] = {  # readiness, liveness
    "mlplatform": (contract.HEALTH_READY_PATH, contract.HEALTH_LIVE_PATH),
    # vLLM's /health is 200 once the engine is up (the model loaded).
    "vllm": ("/health", "/health"),
    "triton": ("/v2/health/ready", "/v2/health/live"),
}
_PRESET_METRICS: dict[str, MetricsEndpoint] = {
    "mlplatform": MetricsEndpoint(port=HTTP_PORT_NAME, path=contract.METRICS_PATH),
    "vllm": MetricsEndpoint(port=HTTP_PORT_NAME, path="/metrics"),
    "triton": MetricsEndpoint(port="metrics", path="/metrics"),
}
_PRESET_IMAGES = {"vllm": VLLM_IMAGE, "triton": TRITON_IMAGE}


class InferenceServiceSpec(common.ReadsModel):
    """An online model server (kind `inference`)."""

    runtime_program: ClassVar[str] = "serve"

    kind: Literal["inference"] = Field(description="`inference`.")
    runtime: Runtime = Field(
        "mlplatform",
        description="The server: `mlplatform` (the platform's runtime server), `vllm` "
        "(vLLM's OpenAI-compatible server), `triton` (NVIDIA Triton), or `custom` (your "
        "image, with `ports`, `probes`, `metrics`). Default: `custom` when `command` is set, "
        "else `mlplatform` (docs/serving.md).",
    )
    model: common.ModelSource | None = Field(
        None,
        description="Where the model comes from, mounted read-only at /models (vLLM: the "
        "model directory; Triton: the model repository). Required for the `mlplatform`, "
        "`vllm` and `triton` runtimes; optional for `custom`.",
    )
    ports: list[ServerPort] | None = Field(
        None,
        min_length=1,
        description="Runtime `custom`: the ports the server listens on; the first is the "
        "Service's port 80. Default: `http` on `port`.",
    )
    probes: ServerProbes | None = Field(
        None,
        description="Runtime `custom`: startup, readiness and liveness probes (HTTP path, "
        "gRPC or TCP, on a declared port). Default: HTTP on `readinessPath`/`livenessPath`.",
    )
    metrics: MetricsEndpoint | None = Field(
        None,
        description="Runtime `custom`: where Prometheus scrapes the server (a declared port "
        "and a path). Default: not scraped (no monitor, no alerts, no custom HPA metric).",
    )
    port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Runtime `custom`, shorthand for `ports: [{name: http, port: ...}]`: the "
        f"port it listens on (non-root, so >= 1024). Default: {contract.SERVE_PORT}.",
    )
    readiness_path: str | None = Field(
        None,
        pattern=r"^/",
        description="Runtime `custom`, shorthand for `probes`: HTTP path of the readiness (and "
        f"startup) probe on the first port. Default: `{contract.HEALTH_READY_PATH}`.",
    )
    liveness_path: str | None = Field(
        None,
        pattern=r"^/",
        description="Runtime `custom`, shorthand for `probes`: HTTP path of the liveness probe. "
        f"Default: `{contract.HEALTH_LIVE_PATH}`.",
    )
    vllm: VllmSettings | None = Field(
        None, description="Runtime `vllm`: engine settings and token-latency objectives."
    )
    model_name: str | None = Field(
        None, description="Model name in the API paths. Default: `name`."
    )
    cpu: Quantity = Field("2", description="CPU request.")
    memory: Quantity = Field(
        "4Gi", description="Memory request, and the limit unless `memoryLimit` is set."
    )
    priority_class: PriorityClassName = Field("serving-critical", description="PriorityClass.")
    min_replicas: int = Field(2, ge=1, description="HPA minimum (2 survives a node loss).")
    max_replicas: int = Field(4, ge=1, description="HPA maximum.")
    target_cpu_utilization: int | None = Field(
        70,
        ge=10,
        le=100,
        description="HPA CPU target, percent of the request; `null` drops the CPU metric.",
    )
    target_memory_utilization: int | None = Field(
        None,
        ge=10,
        le=100,
        description="HPA memory target, percent of the memory request. Default: none.",
    )
    behavior: HpaBehavior = Field(
        default_factory=HpaBehavior,
        description="HPA scaling speed (`scaleUp`, `scaleDown`); unset fields keep the "
        "platform's (up at once, down after 5 minutes, 10 percent a minute).",
    )
    custom_metric: CustomMetric | None = Field(
        None, description="A per-pod metric for the HPA as well (the better signal on GPUs)."
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="Dynamic batching: largest batch.")
    max_batch_delay_ms: float = Field(
        5, ge=0, le=1000, description="Dynamic batching: longest wait."
    )
    max_queue_size: int = Field(256, ge=1, description="Requests queued before answering 503.")
    startup_seconds: int = Field(600, ge=30, description="Time allowed to load and warm the model.")
    latency_slo_ms: float = Field(
        500,
        gt=0,
        description="p95 latency objective; an alert fires when it is missed for 10 minutes.",
    )
    canary: Canary | None = Field(None, description="A canary version.")
    termination_grace_period_seconds: int = Field(
        60, ge=15, le=3600, description="Drain time on SIGTERM."
    )

    @model_validator(mode="before")
    @classmethod
    def _runtime_defaults(cls, data: Any) -> Any:
        """An own `command` means an own server (`custom`); a vLLM pod gets a
        larger scratch volume for its compile and kernel caches."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("runtime") is None:
            data["runtime"] = "custom" if data.get("command") is not None else "mlplatform"
        if data["runtime"] == "vllm" and "scratch" not in data:
            data["scratch"] = VLLM_SCRATCH
        return data

    @model_validator(mode="after")
    def _check_serving(self) -> InferenceServiceSpec:
        problems: list[tuple[Loc, str]] = self._runtime_problems()
        if self.min_replicas > self.max_replicas:
            problems.append(
                (
                    ("minReplicas",),
                    f"{self.min_replicas} is greater than maxReplicas ({self.max_replicas})",
                )
            )
        if self.model is None and self.runtime != "custom":
            what = "the runtime server" if self.uses_runtime else f"the {self.runtime} runtime"
            problems.append((("model",), f"{what} needs a model (`uri` or `claim`)"))
        if self.canary is not None and self.canary.model_uri and self.model is None:
            problems.append((("canary", "modelUri"), "a canary model needs a stable `model`"))
        if (
            self.target_cpu_utilization is None
            and self.target_memory_utilization is None
            and self.custom_metric is None
        ):
            problems.append(
                (
                    ("targetCpuUtilization",),
                    "the HPA needs a metric: keep this, or set targetMemoryUtilization or "
                    "customMetric",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return self

    def _runtime_problems(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        custom_only = [
            (key, value)
            for key, value in (
                ("port", self.port),
                ("readinessPath", self.readiness_path),
                ("livenessPath", self.liveness_path),
                ("ports", self.ports),
                ("probes", self.probes),
                ("metrics", self.metrics),
            )
            if value is not None
        ]
        if self.runtime != "custom":
            problems += [
                (
                    (key,),
                    f"only for an own server (runtime `custom`); the {self.runtime} "
                    "runtime declares its own ports, probes and metrics",
                )
                for key, _ in custom_only
            ]
        if self.vllm is not None and self.runtime != "vllm":
            problems.append((("vllm",), "only with runtime `vllm`"))
        if self.runtime in ("vllm", "triton") and self.command is not None:
            problems.append(
                (
                    ("command",),
                    f"the {self.runtime} runtime runs its own server command; add flags with "
                    "`args`, or use runtime `custom`",
                )
            )
        if self.runtime == "custom" and self.image is None:
            problems.append((("image",), "runtime `custom` runs your own image: set `image`"))
        if self.runtime == "vllm":
            if self.gpus == 0:
                problems.append(
                    (
                        ("gpus",),
                        "the vllm runtime needs GPUs (>= 1; tensor parallelism over all of "
                        "them): vLLM's CUDA image does not serve on CPU",
                    )
                )
            if self.mig_profile and self.gpus > 1:
                problems.append(
                    (("gpus",), "vLLM cannot run tensor parallelism across MIG slices: ask for 1")
                )
        if self.runtime == "custom":
            if self.ports is not None and self.port is not None:
                problems.append((("port",), "set `ports` or `port`, not both"))
            if self.probes is not None:
                problems += [
                    ((key,), "set `probes` or the path shorthands, not both")
                    for key, value in (
                        ("readinessPath", self.readiness_path),
                        ("livenessPath", self.liveness_path),
                    )
                    if value is not None
                ]
            problems += self._port_problems()
        problems += self._hpa_metric_problems()
        return problems

    def _port_problems(self) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        ports = self.server_ports
        by_name: dict[str, ServerPort] = {}
        numbers: dict[int, str] = {}
        for i, p in enumerate(self.ports or ()):
            if p.name in by_name:
                problems.append((("ports", i, "name"), f"{p.name!r} is declared twice"))
            if p.port in numbers:
                problems.append(
                    (("ports", i, "port"), f"{p.port} is already port {numbers[p.port]!r}")
                )
            by_name.setdefault(p.name, p)
            numbers.setdefault(p.port, p.name)
        names = {p.name: p for p in ports}
        declared = ", ".join(names)
        if self.probes is None and ports[0].protocol != "http":
            problems.append(
                (
                    ("probes",),
                    f"the first port ({ports[0].name!r}) is gRPC: the default HTTP probes need an "
                    "HTTP port; declare `probes` (`grpc: true` or `tcp: true`)",
                )
            )
        if self.probes is not None:
            for kind in ("startup", "readiness", "liveness"):
                probe: ProbeSpec | None = getattr(self.probes, kind)
                if probe is None:
                    continue
                at: Loc = ("probes", kind)
                if probe.port is not None and probe.port not in names:
                    problems.append(
                        (
                            (*at, "port"),
                            f"{probe.port!r} is not a declared port (ports: {declared})",
                        )
                    )
                    continue
                target = self._probe_port(probe)
                if target is None:
                    problems.append(((*at, "grpc"), f"no gRPC port to probe (ports: {declared})"))
                elif probe.grpc and target.protocol != "grpc":
                    problems.append(
                        (
                            (*at, "port"),
                            f"{target.name!r} is an HTTP port; a gRPC probe needs "
                            "a `protocol: grpc` port",
                        )
                    )
                elif probe.path is not None and target.protocol != "http":
                    problems.append(
                        (
                            (*at, "port"),
                            f"{target.name!r} is a gRPC port; an HTTP probe needs "
                            "an `http` port (or use `grpc: true`)",
                        )
                    )
        if self.metrics is not None:
            if self.metrics.port not in names:
                problems.append(
                    (
                        ("metrics", "port"),
                        f"{self.metrics.port!r} is not a declared port (ports: {declared})",
                    )
                )
            elif names[self.metrics.port].protocol != "http":
                problems.append(
                    (("metrics", "port"), "Prometheus scrapes over HTTP: name an `http` port")
                )
        return problems

    def _hpa_metric_problems(self) -> list[tuple[Loc, str]]:
        m = self.custom_metric
        if m is None:
            return []
        at: Loc = ("customMetric",)
        if self.runtime != "custom":
            known = metric_catalog.RUNTIME_HPA_METRICS[self.runtime]
            problems: list[tuple[Loc, str]] = [
                (
                    (*at, key),
                    f"only for runtime `custom`: the {self.runtime} runtime's metrics "
                    "are known to the adapter",
                )
                for key, value in (("series", m.series), ("type", m.type))
                if value is not None
            ]
            if m.name is not None and m.name not in {k.name for k in known}:
                problems.append(
                    (
                        (*at, "name"),
                        f"no adapter rule serves {m.name!r} for the {self.runtime} runtime; it "
                        "serves " + ", ".join(k.name for k in known),
                    )
                )
            return problems
        problems = []
        if m.name is None:
            problems.append(
                ((*at, "name"), "required with runtime `custom`: the metric the HPA scales on")
            )
        if m.type is None:
            problems.append(
                (
                    (*at, "type"),
                    "required with runtime `custom`: how the adapter computes the metric from "
                    "your server's series (`gauge`, `counter` or `histogram`); without it no "
                    "adapter rule serves it",
                )
            )
        if self.metrics is None:
            problems.append(
                (
                    (*at,),
                    "the server is not scraped, so no adapter rule can serve this metric: "
                    "declare `metrics` (port and path)",
                )
            )
        return problems

    def _probe_port(self, probe: ProbeSpec) -> ServerPort | None:
        ports = self.server_ports
        if probe.port is not None:
            return next((p for p in ports if p.name == probe.port), None)
        if probe.grpc:
            return next((p for p in ports if p.protocol == "grpc"), None)
        return ports[0]

    # Runtime facts -----------------------------------------------------------

    @property
    def _own_command_needs_image(self) -> bool:
        return self.runtime not in ("vllm", "triton")  # refused with its own message

    @property
    def uses_runtime(self) -> bool:
        return self.runtime == "mlplatform"

    @property
    def server_ports(self) -> list[ServerPort]:
        """The ports the server listens on; the first is the Service's port 80."""
        if self.runtime != "custom":
            return list(_PRESET_PORTS[self.runtime])
        if self.ports:
            return list(self.ports)
        return [ServerPort(name=HTTP_PORT_NAME, port=self.port or contract.SERVE_PORT)]

    @property
    def metrics_endpoint(self) -> MetricsEndpoint | None:
        if self.runtime != "custom":
            return _PRESET_METRICS[self.runtime]
        return self.metrics

    @property
    def metrics_port(self) -> int | None:
        m = self.metrics_endpoint
        if m is None:
            return None
        return next(p.port for p in self.server_ports if p.name == m.port)

    @property
    def serving_ports(self) -> list[ServerPort]:
        """The ports clients use: all but a port that only serves metrics."""
        m = self.metrics_endpoint
        ports = self.server_ports
        return [p for i, p in enumerate(ports) if i == 0 or m is None or p.name != m.port]

    @property
    def hpa_metric(self) -> HpaMetric | None:
        """The per-pod metric the HPA scales on, as the adapter serves it."""
        m = self.custom_metric
        if m is None:
            return None
        if self.runtime == "custom":
            assert m.name is not None and m.type is not None
            return HpaMetric(m.name, m.series or m.name, m.type)
        known = metric_catalog.RUNTIME_HPA_METRICS[self.runtime]
        return next(k for k in known if m.name in (None, k.name))

    @property
    def vllm_settings(self) -> VllmSettings:
        return self.vllm or VllmSettings()

    def probes_for(self, ports: dict[str, int]) -> pod.Probes:
        """The container's probes (HTTP probes by port name, gRPC by number)."""
        if self.runtime == "custom" and self.probes is not None:
            readiness = self.probes.readiness
            startup = self.probes.startup
            liveness = self.probes.liveness
        else:
            ready_path, live_path = _PRESET_PATHS.get(self.runtime, _PRESET_PATHS["mlplatform"])
            if self.runtime == "custom":
                ready_path = self.readiness_path or ready_path
                live_path = self.liveness_path or live_path
            readiness = ProbeSpec(path=ready_path, period_seconds=5)
            liveness = ProbeSpec(path=live_path, period_seconds=10, failure_threshold=3)
            startup = None
        if startup is None:
            startup = readiness.model_copy(
                update={
                    "failure_threshold": math.ceil(self.startup_seconds / readiness.period_seconds),
                    "initial_delay_seconds": 0,
                }
            )
        return pod.Probes(
            startup=self._probe(startup, ports),
            readiness=self._probe(readiness, ports),
            liveness=self._probe(liveness, ports),
        )

    def _probe(self, p: ProbeSpec, ports: dict[str, int]) -> pod.Probe:
        target = self._probe_port(p)
        assert target is not None
        timing = {
            "period_seconds": p.period_seconds,
            "timeout_seconds": p.timeout_seconds,
            "failure_threshold": p.failure_threshold or 3,
            "initial_delay_seconds": p.initial_delay_seconds,
        }
        if p.grpc:
            return pod.GrpcProbe(ports[target.name], p.grpc_service, **timing)
        if p.tcp:
            return pod.TcpProbe(target.name, **timing)
        assert p.path is not None
        return pod.HttpProbe(p.path, target.name, **timing)

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.name

    @property
    def canary_replicas(self) -> int:
        if self.canary is None:
            return 0
        w = self.canary.weight
        return max(1, math.ceil(self.min_replicas * w / (100 - w)))

    @property
    def pods(self) -> int:
        return self.min_replicas + self.canary_replicas

    @property
    def server_port(self) -> int:
        """The Service's target: the first port."""
        return self.server_ports[0].port

    @property
    def object_storage_uris(self) -> list[str]:
        uris = self.model_uris
        if self.canary and self.canary.model_uri:
            uris.append(self.canary.model_uri)
        return uris

    def server_entrypoint(self) -> tuple[list[str] | None, list[str]]:
        """(command, args) of the server container."""
        if self.runtime == "vllm":
            v = self.vllm_settings
            return ["vllm", "serve"], [
                contract.MODEL_DIR,
                f"--served-model-name={self.served_model_name}",
                "--host=0.0.0.0",
                f"--port={VLLM_PORT}",
                f"--tensor-parallel-size={self.gpus}",
                f"--max-model-len={v.max_model_len}",
                f"--gpu-memory-utilization={v.gpu_memory_utilization:g}",
                *self.args,
            ]
        if self.runtime == "triton":
            return ["tritonserver"], [
                f"--model-repository={contract.MODEL_DIR}",
                f"--http-port={TRITON_HTTP_PORT}",
                f"--grpc-port={TRITON_GRPC_PORT}",
                f"--metrics-port={TRITON_METRICS_PORT}",
                "--allow-metrics=true",
                "--allow-gpu-metrics=false",  # the DCGM exporter covers GPUs
                # Ready only once every model in the repository is loaded.
                "--strict-readiness=true",
                *self.args,
            ]
        if self.runtime == "custom":
            return (list(self.command) if self.command is not None else None), list(self.args)
        return common.entrypoint(self, ["python", "-m", contract.SERVE_MODULE], self.runtime_args())

    def server_env(self) -> dict[str, pod.EnvValue]:
        """Environment a preset needs beside the spec's own."""
        scratch = contract.SCRATCH_DIR
        if self.runtime == "vllm":
            # Non-root with a read-only root: every cache under the /tmp emptyDir;
            # the model is local (no hub downloads) and no usage reports leave.
            return {
                "HOME": scratch,
                "XDG_CACHE_HOME": f"{scratch}/.cache",
                "HF_HOME": f"{scratch}/huggingface",
                "HF_HUB_OFFLINE": "1",
                "VLLM_CACHE_ROOT": f"{scratch}/vllm",
                "TRITON_CACHE_DIR": f"{scratch}/triton",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        if self.runtime == "triton":
            return {"HOME": scratch}
        return {}

    @property
    def image_ref(self) -> str | None:
        """The server image: the spec's, else the preset's (None: the runtime image)."""
        return self.image or _PRESET_IMAGES.get(self.runtime)

    def runtime_args(self) -> list[str]:
        return [
            f"--model-dir={contract.MODEL_DIR}",
            f"--model-name={self.served_model_name}",
            f"--port={contract.SERVE_PORT}",
            f"--max-batch-size={self.max_batch_size}",
            f"--max-batch-delay-ms={self.max_batch_delay_ms:g}",
            f"--max-queue-size={self.max_queue_size}",
        ]


@dataclass(frozen=True)
class InferenceServiceArgs:
    spec: InferenceServiceSpec
    context: common.WorkloadContext


class InferenceService(pulumi.ComponentResource):
    """A model server with autoscaling, disruption budget and optional canary.

    Outputs: `url` (in-cluster), `service_name`, `namespace`, `model_name`,
    `protocol`, `runtime`, `min_replicas`, `max_replicas`.
    """

    def __init__(
        self, name: str, args: InferenceServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:InferenceService", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "inference", **{RUNTIME_LABEL: spec.runtime})
        selector = meta.selector(labels)
        sa = common.service_account(name, spec, ctx, labels, self)
        child = ctx.opts(self, sa)

        self.deployment = self._deployment(
            f"{name}-deployment", spec, ctx, labels, "stable", spec.image_ref, spec.model, child
        )
        if spec.canary is not None:
            model = spec.model
            if spec.canary.model_uri and spec.model is not None:
                model = common.ModelSource(
                    uri=spec.canary.model_uri, cache_size=spec.model.cache_size
                )
            self.canary = self._deployment(
                f"{name}-canary",
                spec,
                ctx,
                labels,
                "canary",
                spec.canary.image or spec.image_ref,
                model,
                child,
                replicas=spec.canary_replicas,
            )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta.metadata(spec.name, labels, ctx.namespace),
            spec={
                "type": "ClusterIP",
                "selector": selector,  # both tracks
                "ports": [
                    {
                        "name": p.name,
                        "port": SERVICE_PORT if i == 0 else p.port,
                        "targetPort": p.name,
                        "protocol": "TCP",
                        "appProtocol": "http" if p.protocol == "http" else "kubernetes.io/h2c",
                    }
                    for i, p in enumerate(spec.serving_ports)
                ],
            },
            opts=ctx.opts(self),
        )
        metrics: list[dict[str, Any]] = [
            {
                "type": "Resource",
                "resource": {
                    "name": resource,
                    "target": {"type": "Utilization", "averageUtilization": target},
                },
            }
            for resource, target in (
                ("cpu", spec.target_cpu_utilization),
                ("memory", spec.target_memory_utilization),
            )
            if target is not None
        ]
        hpa_metric = spec.hpa_metric
        if spec.custom_metric is not None and hpa_metric is not None:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": hpa_metric.name},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": spec.custom_metric.target_average_value,
                        },
                    },
                }
            )
        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=meta.metadata(spec.name, labels, ctx.namespace),
            spec={
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": spec.name,
                },
                "minReplicas": spec.min_replicas,
                "maxReplicas": spec.max_replicas,
                "metrics": metrics,
                "behavior": hpa_behavior(spec.behavior),
            },
            opts=ctx.opts(self, self.deployment),
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta.metadata(spec.name, labels, ctx.namespace),
            spec={
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector},
                # A pod that is not running anyway must not block node drains.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
            opts=ctx.opts(self),
        )
        common.open_network(
            "inference",
            name,
            spec,
            ctx,
            labels,
            self,
            serving_ports=[p.port for p in spec.serving_ports],
        )
        self.service_name = spec.name
        self.namespace = ctx.namespace
        self.url = f"http://{spec.name}.{ctx.namespace}.svc.cluster.local"
        self.model_name = spec.served_model_name
        self.protocol = PROTOCOLS[spec.runtime]
        self.runtime = spec.runtime
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas
        self.register_outputs(
            {
                "url": self.url,
                "service_name": self.service_name,
                "namespace": self.namespace,
                "model_name": self.model_name,
                "protocol": self.protocol,
                "runtime": self.runtime,
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
            }
        )

    @staticmethod
    def _deployment(
        resource_name: str,
        spec: InferenceServiceSpec,
        ctx: common.WorkloadContext,
        labels: dict[str, str],
        track: Literal["stable", "canary"],
        image: str | None,
        model: common.ModelSource | None,
        opts: pulumi.ResourceOptions,
        replicas: int | None = None,
    ) -> k8s.apps.v1.Deployment:
        track_labels = {**labels, TRACK_LABEL: track}
        volumes, init, mounts = common.model_pod_parts(model, ctx, spec)
        command, args = spec.server_entrypoint()
        ports = {p.name: p.port for p in spec.server_ports}
        container = pod.Container(
            name="server",
            image=image or ctx.runtime_image,  # type: ignore[arg-type]
            command=command,
            args=args,
            env=common.container_env(spec, spec.server_env()),
            ports=ports,
            resources=common.resources(spec),
            mounts=mounts,
            probes=spec.probes_for(ports),
            pre_stop_sleep_seconds=5,
        )
        name = spec.name if track == "stable" else f"{spec.name}-canary"
        template = common.pod_spec(
            spec,
            ctx,
            track_labels,
            [container],
            init_containers=init,
            volumes=volumes,
            shm_size=spec.shm_size if spec.gpus else None,
            annotations=_scrape_annotations(spec),
        )
        deployment_spec: dict[str, Any] = {
            "selector": {"matchLabels": {**meta.selector(labels), TRACK_LABEL: track}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "revisionHistoryLimit": 5,
            "template": template,
        }
        if replicas is not None:
            deployment_spec["replicas"] = replicas  # the canary; the HPA owns the stable count
        return k8s.apps.v1.Deployment(
            resource_name,
            metadata=common.object_metadata(spec, ctx, track_labels, name),
            spec=deployment_spec,
            opts=opts,
        )


def _scrape_annotations(spec: InferenceServiceSpec) -> dict[str, str]:
    m = spec.metrics_endpoint
    if m is None:
        return {}
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.metrics_port),
        "prometheus.io/path": m.path,
    }
