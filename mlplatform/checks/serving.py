"""Inference services' HPA metrics: one meaning per metrics API name."""

from __future__ import annotations

from infra.config_types import Loc
from mlplatform.stack import StackSettings
from workloads.metric_catalog import RUNTIME_HPA_METRICS, HpaMetric
from workloads.serving import InferenceServiceSpec


def problems(s: StackSettings) -> list[tuple[Loc, str]]:
    """The adapter serves each metrics API name one way: two services that
    compute the same name differently would get one rule or the other."""
    found: list[tuple[Loc, str]] = []
    seen: dict[str, tuple[HpaMetric, str]] = {
        m.name: (m, f"the {runtime} runtime")
        for runtime, metrics in RUNTIME_HPA_METRICS.items()
        for m in metrics
    }
    for i, w in enumerate(s.workloads):
        if not isinstance(w, InferenceServiceSpec) or w.runtime != "custom":
            continue
        m = w.hpa_metric
        if m is None:
            continue
        other = seen.get(m.name)
        if other is not None and other[0] != m:
            found.append(
                (
                    ("workloads", i, "customMetric", "name"),
                    f"{m.name!r} is already served by {other[1]} as the {other[0].type} "
                    f"{other[0].series!r}: give the metric another name",
                )
            )
        seen.setdefault(m.name, (m, f"workloads[{i}]"))
    return found
