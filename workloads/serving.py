"""InferenceService: the runtime's model server (KServe Open Inference Protocol
v2 and v1) as Deployment + ClusterIP Service + HorizontalPodAutoscaler +
PodDisruptionBudget, on GPUs or CPUs.

- Probes: a startup probe on readiness gives model loading and warm-up up to
  `startupSeconds` before liveness applies; readiness is
  `/v2/health/ready` (true only once the model is loaded and warmed),
  liveness `/v2/health/live`.
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
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field, model_validator

from infra import catalog, meta, pod
from infra.config_types import DnsLabel, FieldProblems, Loc, PriorityClassName, Quantity, _Model
from workloads import common
from workloads.runtime import contract

HTTP_PORT_NAME = "http"
SERVICE_PORT = 80
TRACK_LABEL = f"{catalog.LABEL_PREFIX}/track"
PROTOCOL = "kserve-v2"  # and v1; see workloads/runtime/README.md


class ServingSettings(_Model):
    """How inference services are reached."""

    gateway_namespace: DnsLabel = Field(
        "gateway",
        description="Namespace of the ingress gateway (Envoy Gateway, Istio, NGINX, ...): "
        "inference services admit traffic from it.",
    )


class CustomMetric(_Model):
    """A per-pod metric for the HPA (served by a Prometheus adapter)."""

    name: str = Field(
        "mlserve_inflight_requests",
        description="Pods metric name as the metrics API serves it.",
    )
    target_average_value: str = Field("8", description="Scale to keep the per-pod average at this.")


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


class InferenceServiceSpec(common.WorkloadSpec):
    """An online model server (kind `inference`)."""

    runtime_program: ClassVar[str] = "serve"

    kind: Literal["inference"] = Field(description="`inference`.")
    model: common.ModelSource | None = Field(
        None,
        description="Where the model comes from, mounted read-only at /models. Required "
        "for the runtime server; optional for an own server (`image` + `command`).",
    )
    port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Own server (`command`): the port it listens on (non-root, so >= 1024). "
        f"Default: the runtime's {contract.SERVE_PORT}.",
    )
    readiness_path: str | None = Field(
        None,
        pattern=r"^/",
        description="Own server: HTTP path of the readiness (and startup) probe. Default: "
        f"`{contract.HEALTH_READY_PATH}`.",
    )
    liveness_path: str | None = Field(
        None,
        pattern=r"^/",
        description=f"Own server: HTTP path of the liveness probe. Default: "
        f"`{contract.HEALTH_LIVE_PATH}`.",
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

    @model_validator(mode="after")
    def _check_serving(self) -> InferenceServiceSpec:
        problems: list[tuple[Loc, str]] = []
        if self.min_replicas > self.max_replicas:
            problems.append(
                (
                    ("minReplicas",),
                    f"{self.min_replicas} is greater than maxReplicas ({self.max_replicas})",
                )
            )
        if self.model is None and self.uses_runtime:
            problems.append((("model",), "the runtime server needs a model (`uri` or `claim`)"))
        if self.canary is not None and self.canary.model_uri and self.model is None:
            problems.append((("canary", "modelUri"), "a canary model needs a stable `model`"))
        if self.uses_runtime:
            problems += [
                ((key,), "only for an own server (`image` + `command`)")
                for key, value in (
                    ("port", self.port),
                    ("readinessPath", self.readiness_path),
                    ("livenessPath", self.liveness_path),
                )
                if value is not None
            ]
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
    def needs_runtime_image(self) -> bool:
        return self.uses_runtime or (self.model is not None and self.model.uri is not None)

    @property
    def server_port(self) -> int:
        return self.port or contract.SERVE_PORT

    def platform_mounts(self) -> dict[str, str]:
        mounts = super().platform_mounts()
        if self.model is not None:
            mounts["model"] = contract.MODEL_DIR
        return mounts

    def container_shapes(self) -> list[tuple[Loc, common.ContainerShape]]:
        shapes = super().container_shapes()
        if self.model is not None and self.model.uri is not None:
            shapes.append((("model", "uri"), common.FETCH_SHAPE))
        return shapes

    @property
    def object_storage_uris(self) -> list[str]:
        uris = [self.model.uri] if self.model is not None and self.model.uri else []
        if self.canary and self.canary.model_uri:
            uris.append(self.canary.model_uri)
        return uris

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
    `protocol`, `min_replicas`, `max_replicas`.
    """

    def __init__(
        self, name: str, args: InferenceServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:InferenceService", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "inference")
        selector = meta.selector(labels)
        sa = common.service_account(name, spec, ctx, labels, self)
        child = ctx.opts(self, sa)

        self.deployment = self._deployment(
            f"{name}-deployment", spec, ctx, labels, "stable", spec.image, spec.model, child
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
                spec.canary.image or spec.image,
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
                        "name": HTTP_PORT_NAME,
                        "port": SERVICE_PORT,
                        "targetPort": HTTP_PORT_NAME,
                        "protocol": "TCP",
                    }
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
        if spec.custom_metric is not None:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": spec.custom_metric.name},
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
        common.open_network("inference", name, spec, ctx, labels, self, http_port=spec.server_port)
        self.service_name = spec.name
        self.namespace = ctx.namespace
        self.url = f"http://{spec.name}.{ctx.namespace}.svc.cluster.local"
        self.model_name = spec.served_model_name
        self.protocol = PROTOCOL
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas
        self.register_outputs(
            {
                "url": self.url,
                "service_name": self.service_name,
                "namespace": self.namespace,
                "model_name": self.model_name,
                "protocol": self.protocol,
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
        volumes: list[pod.Volume] = []
        init: list[pod.Container] = []
        mounts: list[pod.Mount] = []
        if model is not None:
            volumes, init, model_mount = common.model_volume(model, ctx, spec)
            mounts.append(model_mount)
        ready = spec.readiness_path or contract.HEALTH_READY_PATH
        live = spec.liveness_path or contract.HEALTH_LIVE_PATH
        command, args = common.entrypoint(
            spec, ["python", "-m", contract.SERVE_MODULE], spec.runtime_args()
        )
        period = 5
        container = pod.Container(
            name="server",
            image=image or ctx.runtime_image,  # type: ignore[arg-type]
            command=command,
            args=args,
            env=common.container_env(spec),
            ports={HTTP_PORT_NAME: spec.server_port},
            resources=common.resources(spec),
            mounts=mounts,
            probes=pod.Probes(
                startup=pod.HttpProbe(
                    ready,
                    HTTP_PORT_NAME,
                    period_seconds=period,
                    failure_threshold=math.ceil(spec.startup_seconds / period),
                ),
                readiness=pod.HttpProbe(ready, HTTP_PORT_NAME, period_seconds=period),
                liveness=pod.HttpProbe(
                    live,
                    HTTP_PORT_NAME,
                    period_seconds=10,
                    failure_threshold=3,
                ),
            ),
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
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(spec.server_port),
                "prometheus.io/path": contract.METRICS_PATH,
            },
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
