"""The stack outputs contract: what apps may read from a platform stack, typed.

`infra/platform.py` exports exactly these keys; `docs/stack-outputs.schema.json`
is generated from this model (`make docs`); tests check that every stack's
outputs match it and that secrets stay secret. Consumers read the outputs with
`pulumi stack output --json` or a StackReference (examples/).

Pure pydantic: an app can copy this file to parse the outputs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

SECRET_OUTPUTS = frozenset({"kubeconfig"})
SECRET_PLACEHOLDER = "[secret]"  # what `pulumi stack output --json` prints without --show-secrets


class _Out(BaseModel):
    # camelCase on the wire, as the program exports them.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class GpuNodeGroupOutput(_Out):
    name: str = Field(description="Node group name in the stack config.")
    node_group_name: str = Field(description="The EKS node group's name.")
    instance_types: list[str] = Field(description="EC2 instance types.")
    capacity_type: Literal["ON_DEMAND", "SPOT"]
    gpus_per_node: int = Field(ge=1)
    max_gpus: int = Field(ge=1, description="GPUs at maxSize: the group's capacity.")


class InferenceEndpoint(_Out):
    url: str = Field(
        description="In-cluster URL (port 80), e.g. http://ranker.ranking.svc.cluster.local."
    )
    namespace: str
    service_name: str
    model: str = Field(description="Model name in the API paths (/v2/models/<model>/infer).")
    protocol: Literal["kserve-v2", "openai", "custom"] = Field(
        description="What clients speak: `kserve-v2` (KServe Open Inference Protocol v2; the "
        "runtime server serves v1 too, Triton gRPC as well), `openai` (vLLM: /v1/completions, "
        "/v1/chat/completions), `custom` (an own server's own API)."
    )
    runtime: Literal["mlplatform", "vllm", "triton", "custom"] = Field(
        description="The server (`runtime` of the service)."
    )


class WorkloadOutput(_Out):
    kind: Literal["training", "distributed", "inference", "batch", "nccl-test"]
    team: str
    namespace: str
    name: str


class MonitoringOutput(_Out):
    namespace: str
    dashboards: dict[str, str] = Field(description="Grafana dashboard uid -> title.")
    alert_groups: list[str] = Field(description="PrometheusRule group names.")
    stack: str | None = Field(
        description="Installed chart and version, or null (existing operator)."
    )


class StackOutputs(_Out):
    """Every output of a platform stack (`pulumi stack output --json`)."""

    environment: str
    cluster_name: str
    cluster_mode: Literal["create", "existing", "kubeconfig"]
    cluster_endpoint: str | None = Field(
        description="API server URL; null with a kubeconfig context."
    )
    kubeconfig: str | None = Field(
        description="SECRET. Kubeconfig using `aws eks get-token` (no credentials inside); "
        'null with a kubeconfig context. Shown as "[secret]" unless --show-secrets.',
        json_schema_extra={"x-secret": True},
    )
    oidc_provider_arn: str | None = Field(description="IAM OIDC provider for IRSA roles.")
    kubernetes_version: str
    gpu_node_groups: list[GpuNodeGroupOutput]
    gpu_capacity: int = Field(
        ge=0, description="Physical GPUs at every group's maxSize, plus existing nodes."
    )
    team_namespaces: dict[str, str] = Field(description="Team -> namespace.")
    priority_classes: list[str]
    runtime_image: str | None = Field(description="Runtime image pinned by digest, if configured.")
    workloads: dict[str, WorkloadOutput] = Field(description="`team/name` -> workload.")
    inference_endpoints: dict[str, InferenceEndpoint] = Field(
        description="`team/name` -> endpoint."
    )
    monitoring: MonitoringOutput


def json_schema() -> dict[str, object]:
    schema = StackOutputs.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/mlplatform/mlplatform/docs/stack-outputs.schema.json"
    return schema
