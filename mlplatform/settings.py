"""PlatformSettings: the whole stack configuration as one typed, validated model.

Every key lives under the `mlplatform:` config namespace, in camelCase, e.g.

    config:
      mlplatform:cluster:
        mode: create
        kubernetesVersion: "1.35"
      mlplatform:gpuNodeGroups:
        - name: a10g
          instanceTypes: [g5.2xlarge]
          maxSize: 4

Each part's model lives beside the component it configures (infra/cluster.py
ClusterSettings, infra/tenancy.py TeamSettings, workloads/serving.py
InferenceServiceSpec, ...). mlplatform/stack.py assembles them and derives the
facts that span parts (GPU pools, capacity); mlplatform/checks/ holds the
checks that span parts (quota against capacity, workloads against teams and
pools, queueing, HPA metrics), one module per concern. PlatformSettings is the
two together: every stack configuration the program sees has passed them.
Loading and error reporting are in `mlplatform/loading.py`. The configuration
reference (docs/configuration.md) is generated from the field descriptions
(`make docs`).
"""

from __future__ import annotations

from pydantic import model_validator

from infra.config_types import FieldProblems, Loc
from mlplatform.checks import CHECKS
from mlplatform.stack import (
    NAMESPACE,
    WORKLOAD_KINDS,
    GpuPool,
    PolicySettings,
    StackSettings,
    WorkloadSettings,
)

__all__ = [
    "NAMESPACE",
    "WORKLOAD_KINDS",
    "GpuPool",
    "PlatformSettings",
    "PolicySettings",
    "WorkloadSettings",
]


class PlatformSettings(StackSettings):
    """Everything under the `mlplatform:` config namespace."""

    @model_validator(mode="after")
    def _check(self) -> PlatformSettings:
        problems: list[tuple[Loc, str]] = []
        for check in CHECKS:
            problems += check.problems(self)
        if problems:
            raise FieldProblems(problems)
        return self
