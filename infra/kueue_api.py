# Field names are Kueue's JSON names, so a manifest validates as it is applied.
# ruff: noqa: N815
"""Typed models of the Kueue objects the platform renders, for offline validation.

No published schema package exists for Kueue (unlike prometheus-operator), so
these pydantic models are written from Kueue's own API for the pinned version,
v0.19.2 (`kueue.x-k8s.io/v1beta2`, the storage version since v0.15):

- Go types and kubebuilder markers (enums, patterns, MinItems/MaxItems, CEL
  `XValidation` rules): kubernetes-sigs/kueue@v0.19.2 `apis/kueue/v1beta2/`
  (`resourceflavor_types.go`, `clusterqueue_types.go`, `localqueue_types.go`,
  `workloadpriorityclass_types.go`, `fairsharing_types.go`);
- the admission webhook's extra checks: `pkg/webhooks/clusterqueue_webhook.go`
  (each flavor lists the covered resources in the same order, no resource or
  flavor twice, lendingLimit <= nominalQuota, limits only with a cohort) and
  `pkg/webhooks/resourceflavor_webhook.go`;
- reference: https://kueue.sigs.k8s.io/docs/reference/kueue.v1beta2/

Stricter than the API server in one way on purpose: unknown fields are errors
(the API server would prune them silently). Only the four kinds the platform
creates are modelled; `validate()` reports every problem with its field path.

Pure (pydantic and the project's quantity parser): the offline preview and the
tests use it; the Queueing component builds its objects through it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra import quantity

KUEUE_VERSION = "v0.19.2"
GROUP = "kueue.x-k8s.io"
API_VERSION = f"{GROUP}/v1beta2"
REFERENCE = "https://kueue.sigs.k8s.io/docs/reference/kueue.v1beta2/"

# Labels Kueue reads on jobs (pkg/controller/constants/constants.go).
QUEUE_NAME_LABEL = f"{GROUP}/queue-name"
PRIORITY_CLASS_LABEL = f"{GROUP}/priority-class"

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
INT32_MAX = 2**31 - 1


def _subdomain(value: str) -> str:
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        raise ValueError(f"{value!r} is not a DNS-1123 subdomain (at most 253 characters)")
    return value


def _qualified(value: str) -> str:
    if len(value) > 316 or not _QUALIFIED.match(value):
        raise ValueError(f"{value!r} is not a qualified name")
    return value


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a quantity")
    try:
        amount = quantity.parse(value)
    except quantity.QuantityError as exc:
        raise ValueError(str(exc)) from None
    if amount < 0:
        raise ValueError(f"{value!r} must be non-negative")
    return str(value)


Name = Annotated[str, AfterValidator(_subdomain)]
QualifiedName = Annotated[str, AfterValidator(_qualified)]
Quantity = Annotated[Any, AfterValidator(_quantity)]
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX, strict=True)]
Effect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
StopPolicy = Literal["None", "Hold", "HoldAndDrain"]


class _Model(BaseModel):
    # Manifests are camelCase already: field names are the JSON names.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectMeta(_Model):
    name: Name
    namespace: Name | None = None
    labels: dict[QualifiedName, str] = {}
    annotations: dict[QualifiedName, str] = {}


# core/v1 pieces -----------------------------------------------------------


class Taint(_Model):
    key: QualifiedName
    value: str | None = None
    effect: Effect


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Effect | None = None
    tolerationSeconds: int | None = None

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        # The CEL rules on ResourceFlavorSpec.tolerations.
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when 'key' is empty")
        if self.tolerationSeconds is not None and self.effect != "NoExecute":
            raise ValueError("effect must be 'NoExecute' when 'tolerationSeconds' is set")
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a value must be empty when 'operator' is 'Exists'")
        return self


class LabelSelectorRequirement(_Model):
    key: QualifiedName
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values must be empty for operator {self.operator}")
        return self


class LabelSelector(_Model):
    matchLabels: dict[QualifiedName, str] = {}
    matchExpressions: list[LabelSelectorRequirement] = []


# ResourceFlavor -----------------------------------------------------------


class ResourceFlavorSpec(_Model):
    nodeLabels: dict[QualifiedName, str] = Field({}, max_length=8)
    nodeTaints: list[Taint] = Field([], max_length=8)
    tolerations: list[Toleration] = Field([], max_length=8)
    topologyName: Name | None = None

    @model_validator(mode="after")
    def _rules(self) -> ResourceFlavorSpec:
        if self.topologyName is not None and not self.nodeLabels:
            raise ValueError("at least one nodeLabel is required when topology is set")
        seen = set()
        for t in self.nodeTaints:  # resourceflavor_webhook.go: no duplicate key+effect
            if (t.key, t.effect) in seen:
                raise ValueError(f"duplicate nodeTaint {t.key}:{t.effect}")
            seen.add((t.key, t.effect))
        return self


class ResourceFlavor(_Model):
    apiVersion: Literal["kueue.x-k8s.io/v1beta2"]
    kind: Literal["ResourceFlavor"]
    metadata: ObjectMeta
    spec: ResourceFlavorSpec = ResourceFlavorSpec()

    @model_validator(mode="after")
    def _cluster_scoped(self) -> ResourceFlavor:
        if self.metadata.namespace:
            raise ValueError("ResourceFlavor is cluster-scoped: metadata.namespace must be unset")
        return self


# ClusterQueue -------------------------------------------------------------


class ResourceQuota(_Model):
    name: QualifiedName
    nominalQuota: Quantity
    borrowingLimit: Quantity | None = None
    lendingLimit: Quantity | None = None

    @model_validator(mode="after")
    def _lending(self) -> ResourceQuota:
        if self.lendingLimit is not None and quantity.parse(self.lendingLimit) > quantity.parse(
            self.nominalQuota
        ):
            raise ValueError("lendingLimit must be less than or equal to nominalQuota")
        return self


class FlavorQuotas(_Model):
    name: Name
    resources: list[ResourceQuota] = Field(min_length=1, max_length=64)


class ResourceGroup(_Model):
    coveredResources: list[QualifiedName] = Field(min_length=1, max_length=64)
    flavors: list[FlavorQuotas] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _rules(self) -> ResourceGroup:
        for f in self.flavors:
            if len(f.resources) != len(self.coveredResources):
                raise ValueError(
                    "flavors must have the same number of resources as the coveredResources"
                )
            names = [r.name for r in f.resources]
            if names != list(self.coveredResources):
                raise ValueError(
                    f"flavor {f.name!r}: resources {names} must match coveredResources "
                    f"{list(self.coveredResources)} in the same order"
                )
        return self


class BorrowWithinCohort(_Model):
    policy: Literal["Never", "LowerPriority"] = "Never"
    maxPriorityThreshold: Int32 | None = None


class ClusterQueuePreemption(_Model):
    reclaimWithinCohort: Literal["Never", "LowerPriority", "Any"] = "Never"
    borrowWithinCohort: BorrowWithinCohort | None = None
    withinClusterQueue: Literal["Never", "LowerPriority", "LowerOrNewerEqualPriority"] = "Never"

    @model_validator(mode="after")
    def _rules(self) -> ClusterQueuePreemption:
        if (
            self.reclaimWithinCohort == "Never"
            and self.borrowWithinCohort is not None
            and self.borrowWithinCohort.policy != "Never"
        ):
            raise ValueError("reclaimWithinCohort=Never and borrowWithinCohort.Policy!=Never")
        return self


class FlavorFungibility(_Model):
    whenCanBorrow: Literal["MayStopSearch", "TryNextFlavor"] = "MayStopSearch"
    whenCanPreempt: Literal["MayStopSearch", "TryNextFlavor"] = "TryNextFlavor"
    preference: Literal["BorrowingOverPreemption", "PreemptionOverBorrowing"] | None = None

    @model_validator(mode="after")
    def _rules(self) -> FlavorFungibility:
        if self.preference is not None and not (
            self.whenCanBorrow == "TryNextFlavor" and self.whenCanPreempt == "TryNextFlavor"
        ):
            raise ValueError(
                "preference can only be set when both whenCanBorrow and whenCanPreempt are "
                "TryNextFlavor"
            )
        return self


class FairSharing(_Model):
    weight: Quantity | None = None


class ClusterQueueSpec(_Model):
    resourceGroups: list[ResourceGroup] = Field([], max_length=16)
    cohortName: Name | None = None
    queueingStrategy: Literal["StrictFIFO", "BestEffortFIFO"] = "BestEffortFIFO"
    namespaceSelector: LabelSelector | None = None
    flavorFungibility: FlavorFungibility | None = None
    preemption: ClusterQueuePreemption | None = None
    stopPolicy: StopPolicy = "None"
    fairSharing: FairSharing | None = None

    @model_validator(mode="after")
    def _rules(self) -> ClusterQueueSpec:
        resources: set[str] = set()
        flavors: set[str] = set()
        for g in self.resourceGroups:
            for r in g.coveredResources:
                if r in resources:
                    raise ValueError(f"resource {r!r} is covered by more than one resourceGroup")
                resources.add(r)
            for f in g.flavors:
                if f.name in flavors:
                    raise ValueError(f"flavor {f.name!r} appears in more than one place")
                flavors.add(f.name)
                if not self.cohortName:
                    for q in f.resources:
                        if q.borrowingLimit is not None:
                            raise ValueError("borrowingLimit must be nil when cohort is empty")
                        if q.lendingLimit is not None:
                            raise ValueError("lendingLimit must be nil when cohort is empty")
        if len(flavors) > 256:
            raise ValueError("at most 256 flavors across all resourceGroups")
        return self


class ClusterQueue(_Model):
    apiVersion: Literal["kueue.x-k8s.io/v1beta2"]
    kind: Literal["ClusterQueue"]
    metadata: ObjectMeta
    spec: ClusterQueueSpec = ClusterQueueSpec()

    @model_validator(mode="after")
    def _cluster_scoped(self) -> ClusterQueue:
        if self.metadata.namespace:
            raise ValueError("ClusterQueue is cluster-scoped: metadata.namespace must be unset")
        return self


# LocalQueue and WorkloadPriorityClass ------------------------------------


class LocalQueueSpec(_Model):
    clusterQueue: Name
    stopPolicy: StopPolicy = "None"
    fairSharing: FairSharing | None = None


class LocalQueue(_Model):
    apiVersion: Literal["kueue.x-k8s.io/v1beta2"]
    kind: Literal["LocalQueue"]
    metadata: ObjectMeta
    spec: LocalQueueSpec

    @model_validator(mode="after")
    def _namespaced(self) -> LocalQueue:
        if not self.metadata.namespace:
            raise ValueError("LocalQueue is namespaced: metadata.namespace is required")
        return self


class WorkloadPriorityClass(_Model):
    apiVersion: Literal["kueue.x-k8s.io/v1beta2"]
    kind: Literal["WorkloadPriorityClass"]
    metadata: ObjectMeta
    value: Int32
    description: str = Field("", max_length=2048)


MODELS: dict[str, type[_Model]] = {
    "ResourceFlavor": ResourceFlavor,
    "ClusterQueue": ClusterQueue,
    "LocalQueue": LocalQueue,
    "WorkloadPriorityClass": WorkloadPriorityClass,
}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "lax-or-strict", "json-or-python")):
            out += f".{part}" if out else part
    return out or "(root)"


def has_model(manifest: dict[str, Any]) -> bool:
    return manifest.get("apiVersion") == API_VERSION and manifest.get("kind") in MODELS


def validate(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a Kueue manifest as (field path, message); [] when valid.
    Raises KeyError for kinds without a model (check `has_model` first)."""
    model = MODELS[str(manifest.get("kind"))]
    try:
        model.model_validate(manifest)
    except ValidationError as exc:
        return sorted(
            {(_path(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")) for e in exc.errors()}
        )
    return []
