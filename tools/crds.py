"""Validation of custom resources against the models of the operator version the
stack installs: prometheus-operator v0.91.0 (kube-prometheus-stack 86.3.2), as
published on npm by @kubernetes-models/prometheus-operator 6.0.0 (generated from
that version's Go API); Karpenter's NodePool (karpenter.sh/v1) and EC2NodeClass
(karpenter.k8s.aws/v1), and the NodeOverlay (karpenter.sh/v1alpha1) of EFA pools,
against @kubernetes-models/karpenter 2.0.0, generated
from the v1 Go API of karpenter-provider-aws v1.12.1 / karpenter v1.12.0 (its
go.mod in tommy351/kubernetes-models-ts, third-party/karpenter). The stack
installs Karpenter 1.14.1: the API version (v1) is the same; fields added after
1.12 would be unknown to the models, and none of them is used. The Makefile
installs both packages into .tools/ (pinned).

These models check structure, types and enums, not unknown fields (the API
server prunes fields a CRD does not know); plan.md says so.

Kueue publishes no such package: its objects are validated against the
project's pydantic models of the pinned version (infra/kueue_api.py), which do
reject unknown fields.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import kueue_api
from tools.schema import SchemaProblem

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
SCRIPT = Path(__file__).resolve().parent / "validate_crds.mjs"
_KARPENTER_MODELS = "Karpenter v1 API models (@kubernetes-models/karpenter 2.0.0, from v1.12)"
MODELS = {
    "monitoring.coreos.com/v1": "prometheus-operator v0.91.0 models "
    "(@kubernetes-models/prometheus-operator 6.0.0)",
    "karpenter.sh/v1": _KARPENTER_MODELS,
    "karpenter.k8s.aws/v1": _KARPENTER_MODELS,
    "karpenter.sh/v1alpha1": _KARPENTER_MODELS.replace("v1 API", "v1alpha1 API"),
}
PACKAGES = {
    "monitoring.coreos.com/v1": "prometheus-operator",
    "karpenter.sh/v1": "karpenter",
    "karpenter.k8s.aws/v1": "karpenter",
    "karpenter.sh/v1alpha1": "karpenter",
}
MODELS_DIR = TOOLS / "node_modules" / "@kubernetes-models"
PACKAGE_DIR = MODELS_DIR / "prometheus-operator"


@dataclass
class CrdReport:
    problems: dict[str, list[SchemaProblem]]
    validated: dict[str, str]  # path -> what it was validated against
    unvalidated: dict[str, str]  # path -> why not


KUEUE_MODELS = (
    f"Kueue {kueue_api.KUEUE_VERSION} models (infra/kueue_api.py, from the "
    f"{kueue_api.API_VERSION} API; unknown fields are errors)"
)


def validate(manifests: dict[str, dict[str, Any]]) -> CrdReport:
    """Validate custom resources (path -> manifest) whose group we have models for:
    Kueue's with the project's own models, prometheus-operator's with npm's."""
    report = CrdReport({}, {}, {})
    kueue = {p: m for p, m in manifests.items() if kueue_api.has_model(m)}
    for path, m in kueue.items():
        report.validated[path] = KUEUE_MODELS
        problems = kueue_api.validate(m)
        if problems:
            report.problems[path] = [SchemaProblem(where, msg) for where, msg in problems]
    manifests = {p: m for p, m in manifests.items() if p not in kueue}
    known = {p: m for p, m in manifests.items() if m.get("apiVersion") in MODELS}
    for path, m in manifests.items():
        if path not in known:
            report.unvalidated[path] = (
                f"no schema for {m.get('apiVersion')} {m.get('kind')} (custom resource of an "
                "operator this stack does not install)"
            )
    if not known:
        return report
    node = shutil.which("node") or ""
    missing = {p for p, m in known.items() if not (MODELS_DIR / PACKAGES[m["apiVersion"]]).is_dir()}
    if not node:
        missing = set(known)
    for path in missing:
        report.unvalidated[path] = "CRD models not installed: run `make .tools/.installed`"
    known = {p: m for p, m in known.items() if p not in missing}
    if not known:
        return report
    payload = json.dumps([{"path": p, "manifest": m} for p, m in sorted(known.items())])
    result = subprocess.run(
        [node, str(SCRIPT), str(TOOLS)],
        input=payload,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"CRD validation failed to run: {result.stderr.strip()[-500:]}")
    for path, errors in json.loads(result.stdout).items():
        api = known[path]["apiVersion"]
        if errors is None:
            report.unvalidated[path] = f"no model for {api} {known[path].get('kind')}"
        elif errors:
            report.problems[path] = [SchemaProblem(e["path"], e["message"]) for e in errors]
            report.validated[path] = MODELS[api]
        else:
            report.validated[path] = MODELS[api]
    return report
