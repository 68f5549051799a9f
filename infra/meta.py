"""Kubernetes object metadata: the recommended labels on everything the platform creates.

https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra import catalog


def labels(name: str, instance: str, component: str, **extra: str) -> dict[str, str]:
    """`app.kubernetes.io/{name,instance,component,part-of,managed-by}` plus extras.

    name: what the application is (`nvidia-device-plugin`, `inference-service`);
    instance: this installation of it (a workload or team name, unique per namespace);
    component: its role in the architecture (`device-plugin`, `serving`, `training`).
    """
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": catalog.PART_OF,
        "app.kubernetes.io/managed-by": catalog.MANAGED_BY,
        **extra,
    }


def selector(object_labels: dict[str, str]) -> dict[str, str]:
    """The stable subset of `labels()` that selectors use (never the version or extras)."""
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance")
    return {k: object_labels[k] for k in keys}


def checkov_skips(reasons: Mapping[str, str]) -> dict[str, str]:
    """Annotations that waive checkov checks on this one object, each with its
    reason (`checkov.io/skipN: CKV_K8S_11=<reason>`), never a global skip list."""
    annotations = {}
    for i, (check, reason) in enumerate(sorted(reasons.items()), 1):
        if "=" in reason or not reason.strip():
            raise ValueError(f"{check}: a skip needs a reason without '=' (checkov splits on it)")
        annotations[f"checkov.io/skip{i}"] = f"{check}={reason}"
    return annotations


def metadata(
    name: str,
    object_labels: dict[str, str],
    namespace: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(object_labels)}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta
