"""Hygiene rules: container resources, pinned images, inference readiness and
PDBs, Job limits, default-deny namespaces, Pod Security restricted, no
LoadBalancer Services."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from infra import catalog
from policies.rules.core import PolicyConfig, Resource, pod_containers, pod_templates, rule


@rule(
    "container-resources",
    description="Every container sets CPU and memory requests and a memory limit.",
    enforcement="mandatory",
    severity="medium",
    remediation="Set resources.requests.cpu, resources.requests.memory and "
    "resources.limits.memory.",
)
def container_resources(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        for key, c in pod_containers(t.spec):
            r = c.get("resources") or {}
            requests, limits = r.get("requests") or {}, r.get("limits") or {}
            missing = [
                n
                for n, ok in (
                    ("requests.cpu", "cpu" in requests),
                    ("requests.memory", "memory" in requests),
                    ("limits.memory", "memory" in limits),
                )
                if not ok
            ]
            if missing:
                yield f"{t.where}.{key} {c.get('name')!r} sets no {', '.join(missing)}"


@rule(
    "image-pinned",
    description="Images are pinned: never `:latest` or untagged; by digest where the environment "
    "requires it. One narrow waiver: the AWS EFA device plugin (published by tag only in "
    "Amazon EKS's ECR) may run by version tag in its kube-system DaemonSet when the pod "
    "template states why (mlplatform.io/digest-waiver).",
    enforcement="mandatory",
    severity="high",
    remediation="Pin a version tag, or `@sha256:` digest where "
    "mlplatform:policy.requireImageDigests is set.",
    config_keys=("requireImageDigests",),
)
def image_pinned(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    for t in pod_templates(res):
        for key, c in pod_containers(t.spec):
            image = c.get("image")
            if not isinstance(image, str) or not image:
                continue  # unknown until the image is built
            name = c.get("name")
            last = image.split("@", 1)[0].rsplit("/", 1)[-1]
            if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
                yield f"{t.where}.{key} {name!r} runs {image!r}, which is not pinned to a version"
            elif (
                cfg.require_image_digests
                and "@sha256:" not in image
                and not _digest_waived(res, image)
            ):
                yield f"{t.where}.{key} {name!r} runs {image!r}: this environment requires a digest"


DIGEST_WAIVER_ANNOTATION = f"{catalog.LABEL_PREFIX}/digest-waiver"
# The images a digest waiver may cover: the AWS EFA device plugin from Amazon
# EKS's ECR registries, which publish it by tag only.
_WAIVABLE_IMAGE = re.compile(
    rf"^{catalog.EFA_DEVICE_PLUGIN_REGISTRY}/{re.escape(catalog.EFA_DEVICE_PLUGIN_REPOSITORY)}"
    r":v\d+(\.\d+)*$"
)


def _digest_waived(res: Resource, image: str) -> bool:
    """The EFA device plugin's kube-system DaemonSet, running AWS's image by a version
    tag, whose pod template states why (mlplatform:efaDevicePlugin.digestWaiver).
    Only the digest requirement is waived, for that image only."""
    if res.kind != "DaemonSet" or res.namespace != "kube-system":
        return False
    if not _WAIVABLE_IMAGE.match(image):
        return False
    template = ((res.props.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return bool((template.get("annotations") or {}).get(DIGEST_WAIVER_ANNOTATION))


def _is_inference(res: Resource) -> bool:
    labels = ((res.props.get("metadata") or {}).get("labels")) or {}
    return (
        res.kind == "Deployment"
        and labels.get(f"{catalog.LABEL_PREFIX}/workload-kind") == "inference"
    )


@rule(
    "inference-readiness",
    description="Inference services have readiness and liveness probes on every serving "
    "container, on ports the container declares.",
    enforcement="mandatory",
    severity="medium",
    remediation="Add a readinessProbe and a livenessProbe (the runtime serves /v2/health/ready "
    "once the model is loaded; an own server declares `probes` on its `ports`).",
)
def inference_readiness(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if not _is_inference(res):
        return
    for t in pod_templates(res):
        for c in t.spec.get("containers") or []:
            name = c.get("name")
            for kind in ("readinessProbe", "livenessProbe"):
                if not c.get(kind):
                    yield f"{t.where}.containers {name!r} has no {kind}"
            ports = c.get("ports") or []
            declared = {p.get("name") for p in ports} | {p.get("containerPort") for p in ports}
            if not ports:
                continue
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if port is not None and port not in declared:
                        yield (
                            f"{t.where}.containers {name!r}: the {kind} checks port {port!r}, "
                            "which the container does not declare"
                        )


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


@rule(
    "inference-pdb",
    description="Inference services have a PodDisruptionBudget covering their pods.",
    enforcement="mandatory",
    severity="medium",
    remediation="Add a PodDisruptionBudget selecting the Deployment's pods (InferenceService "
    "creates one).",
    stack=True,
)
def inference_pdb(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    pdbs = [
        (res.namespace, (res.props.get("spec") or {}).get("selector") or {})
        for res in resources
        if res.is_kubernetes and res.kind == "PodDisruptionBudget"
    ]
    for res in resources:
        if not _is_inference(res):
            continue
        labels = (((res.props.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        if not any(ns == res.namespace and _selects(sel, labels) for ns, sel in pdbs):
            yield res, "no PodDisruptionBudget selects this inference service's pods"


@rule(
    "job-limits",
    description="Jobs set backoffLimit (or backoffLimitPerIndex) and activeDeadlineSeconds or "
    "ttlSecondsAfterFinished.",
    enforcement="mandatory",
    severity="medium",
    remediation="Set backoffLimit and activeDeadlineSeconds (a stuck job holds GPUs) or "
    "ttlSecondsAfterFinished.",
)
def job_limits(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if not res.is_kubernetes or res.kind not in ("Job", "CronJob"):
        return
    spec = res.props.get("spec") or {}
    if res.kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    if spec.get("backoffLimit") is None and spec.get("backoffLimitPerIndex") is None:
        yield "no backoffLimit: the default (6) retries crashes silently"
    if spec.get("activeDeadlineSeconds") is None and spec.get("ttlSecondsAfterFinished") is None:
        yield "neither activeDeadlineSeconds nor ttlSecondsAfterFinished is set"


@rule(
    "namespace-default-deny",
    description="Every team namespace has a default-deny NetworkPolicy (all pods, ingress and "
    "egress, no rules).",
    enforcement="mandatory",
    severity="high",
    remediation="Declare the team in mlplatform:teams (TeamNamespace creates `default-deny`).",
    stack=True,
)
def namespace_default_deny(
    resources: list[Resource], cfg: PolicyConfig
) -> Iterator[tuple[Resource | None, str]]:
    denied = set()
    for res in resources:
        if res.is_kubernetes and res.kind == "NetworkPolicy":
            spec = res.props.get("spec") or {}
            if (
                spec.get("podSelector") in ({}, None)
                and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"}
                and not spec.get("ingress")
                and not spec.get("egress")
            ):
                denied.add(res.namespace)
    for res in resources:
        if res.is_kubernetes and res.kind == "Namespace":
            meta = res.props.get("metadata") or {}
            if catalog.TEAM_LABEL in (meta.get("labels") or {}) and meta.get("name") not in denied:
                yield res, f"team namespace {meta.get('name')!r} has no default-deny NetworkPolicy"


_ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
    "name",
}


@rule(
    "pod-security-restricted",
    description="Pods outside kube-system meet the Pod Security Standard `restricted`.",
    enforcement="mandatory",
    severity="critical",
    remediation="Build pods with infra/pod.py (non-root, no privilege escalation, capabilities "
    "dropped, RuntimeDefault seccomp, no host namespaces or hostPath).",
)
def pod_security_restricted(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if res.namespace == "kube-system":
        return
    for t in pod_templates(res):
        pod = t.spec
        psc = pod.get("securityContext") or {}
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(host):
                yield f"{t.where}.{host} is true"
        for v in pod.get("volumes") or []:
            bad = set(v) - _ALLOWED_VOLUMES
            if bad:
                yield f"{t.where}.volumes {v.get('name')!r} uses {', '.join(sorted(bad))}"
        pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
        for key, c in pod_containers(pod):
            sc = c.get("securityContext") or {}
            where = f"{t.where}.{key} {c.get('name')!r}"
            if sc.get("privileged"):
                yield f"{where} is privileged"
            if sc.get("allowPrivilegeEscalation") is not False:
                yield f"{where} does not set allowPrivilegeEscalation: false"
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if non_root is not True or sc.get("runAsUser", psc.get("runAsUser")) == 0:
                yield f"{where} may run as root (runAsNonRoot is not true)"
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                yield f"{where} does not drop ALL capabilities"
            extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
            if extra:
                yield f"{where} adds capabilities {', '.join(sorted(extra))}"
            seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp not in ("RuntimeDefault", "Localhost"):
                yield f"{where} has no RuntimeDefault seccomp profile"
            if any(p.get("hostPort") for p in c.get("ports") or []):
                yield f"{where} uses a hostPort"


@rule(
    "no-load-balancer",
    description="No Services of type LoadBalancer unless the environment allows them (traffic "
    "enters through the gateway).",
    enforcement="mandatory",
    severity="medium",
    remediation="Use a ClusterIP Service behind the platform gateway, or set "
    "mlplatform:policy.allowLoadBalancers.",
    config_keys=("allowLoadBalancers",),
)
def no_load_balancer(res: Resource, cfg: PolicyConfig) -> Iterator[str]:
    if (
        res.is_kubernetes
        and res.kind == "Service"
        and (res.props.get("spec") or {}).get("type") == "LoadBalancer"
    ) and not cfg.allow_load_balancers:
        yield "Service of type LoadBalancer (a cloud load balancer per service)"
