"""ClusterAutoscaler: scales the GPU managed node groups for pending pods
(`capacity.autoscaler: cluster-autoscaler`).

It finds the groups by the discovery tags their Auto Scaling groups carry
(infra/gpu_nodes.py: `k8s.io/cluster-autoscaler/enabled` and
`k8s.io/cluster-autoscaler/<cluster>`), and builds a node of a group at zero
from its node-template tags (GPUs, labels, taints). The system node group has
no discovery tags: it keeps its configured size.

Rendered here as Kubernetes objects (ServiceAccount, RBAC, Deployment), not as
the Helm chart: the offline preview validates every field strictly, checkov
scans it, the pod comes from the platform's pod builder (non-root, read-only
root filesystem, no capabilities), and there is no chart version to keep
beside the image. The RBAC and arguments follow the upstream example for AWS
auto-discovery (cluster-autoscaler/cloudprovider/aws/examples/
cluster-autoscaler-autodiscover.yaml at tag cluster-autoscaler-1.35.2).

Image: the release of the cluster's minor version (the autoscaler follows
Kubernetes' scheduler, so its minor must match). Tags from the
kubernetes/autoscaler repository (tags `cluster-autoscaler-1.3x.y`, newest per
minor as of 2026-08-22). Their registry.k8s.io digests could not be verified
offline (the promoter manifest in kubernetes/k8s.io available here stops at
v1.33.1), so the image is pinned by tag; set `capacity.clusterAutoscaler.image`
to a digest-pinned reference to pin it fully.

IAM (IRSA): the "full features" policy of the AWS cloud provider README, with
the two write actions limited to Auto Scaling groups tagged as this cluster's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator

from infra import catalog, iam, meta, pod
from infra.config_types import _Model
from infra.gpu_nodes import CA_PREFIX

# Newest cluster-autoscaler release per Kubernetes minor (kubernetes/autoscaler tags).
IMAGES = {
    "1.33": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.33.6",
    "1.34": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.34.5",
    "1.35": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.35.2",
    "1.36": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.36.1",
}
NAMESPACE = "kube-system"
NAME = "cluster-autoscaler"
METRICS_PORT = 8085
NOBODY = 65534

# `priority` needs a ConfigMap of group priorities the stack does not write, and
# `price` is not implemented for AWS: neither is offered.
Expander = Literal["least-waste", "most-pods", "random"]


class ClusterAutoscalerSettings(_Model):
    """The Cluster Autoscaler (`capacity.autoscaler: cluster-autoscaler`)."""

    expander: Expander = Field(
        "least-waste",
        description="Which group to grow when several fit a pending pod. `least-waste` "
        "(default): the one left with the least idle CPU and memory, so a 1-GPU pod does "
        "not start an 8-GPU node, and it needs no configuration beside the groups. "
        "`most-pods` and `random` are the alternatives.",
    )
    scale_down_unneeded_time: str = Field(
        "10m",
        description="How long a node must be unneeded before it is removed "
        "(`--scale-down-unneeded-time`): idle GPU cost against node start time.",
    )
    image: str | None = Field(
        None,
        description="Autoscaler image. Default: the release for the cluster's Kubernetes "
        "minor, by tag ("
        + ", ".join(f"{k}: {v.rsplit(':', 1)[1]}" for k, v in IMAGES.items())
        + "). Give a `@sha256:` reference to pin a digest.",
    )

    @field_validator("scale_down_unneeded_time")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        if not re.fullmatch(r"(\d+(s|m|h))+", value):
            raise ValueError(f"{value!r} is not a duration such as 10m")
        return value


def image_for(settings: ClusterAutoscalerSettings, kubernetes_version: str) -> str | None:
    return settings.image or IMAGES.get(kubernetes_version)


def command(cluster_name: str, s: ClusterAutoscalerSettings) -> list[str]:
    return [
        "./cluster-autoscaler",
        "--cloud-provider=aws",
        f"--namespace={NAMESPACE}",
        f"--node-group-auto-discovery=asg:tag={CA_PREFIX}/enabled,{CA_PREFIX}/{cluster_name}",
        f"--expander={s.expander}",
        # Groups of the same shape (e.g. one per zone) grow together.
        "--balance-similar-node-groups",
        f"--balancing-ignore-label={catalog.NODE_GROUP_LABEL}",
        # Pods with emptyDir (every platform pod: /tmp, /dev/shm) must not pin
        # an idle GPU node forever.
        "--skip-nodes-with-local-storage=false",
        f"--scale-down-unneeded-time={s.scale_down_unneeded_time}",
        "--stderrthreshold=info",
        "--v=2",
    ]


def iam_policy(cluster_name: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Discover",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "autoscaling:DescribeLaunchConfigurations",
                        "autoscaling:DescribeScalingActivities",
                        "ec2:DescribeImages",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeLaunchTemplateVersions",
                        "ec2:GetInstanceTypesFromInstanceRequirements",
                        "eks:DescribeNodegroup",
                    ],
                    "Resource": "*",
                },
                {
                    "Sid": "ScaleOwnGroups",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:SetDesiredCapacity",
                        "autoscaling:TerminateInstanceInAutoScalingGroup",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {f"aws:ResourceTag/{CA_PREFIX}/{cluster_name}": "owned"}
                    },
                },
            ],
        }
    )


def cluster_role_rules() -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["events", "endpoints"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update"]},
        {
            "apiGroups": [""],
            "resources": ["endpoints"],
            "resourceNames": [NAME],
            "verbs": ["get", "update"],
        },
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["watch", "list", "get", "update"]},
        {
            "apiGroups": [""],
            "resources": [
                "namespaces",
                "pods",
                "services",
                "replicationcontrollers",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            "verbs": ["watch", "list", "get"],
        },
        {
            "apiGroups": ["policy"],
            "resources": ["poddisruptionbudgets"],
            "verbs": ["watch", "list"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets", "replicasets", "daemonsets"],
            "verbs": ["watch", "list", "get"],
        },
        {
            "apiGroups": ["storage.k8s.io"],
            "resources": [
                "storageclasses",
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
                "volumeattachments",
            ],
            "verbs": ["watch", "list", "get"],
        },
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [NAME],
            "verbs": ["get", "update"],
        },
    ]


def role_rules() -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["cluster-autoscaler-status", "cluster-autoscaler-priority-expander"],
            "verbs": ["delete", "get", "update", "watch"],
        },
    ]


@dataclass(frozen=True)
class ClusterAutoscalerArgs:
    settings: ClusterAutoscalerSettings
    cluster_name: str
    kubernetes_version: str
    region: str
    partition: pulumi.Input[str]
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer_url: pulumi.Input[str]
    node_selector: Mapping[str, str] | None = None


class ClusterAutoscaler(pulumi.ComponentResource):
    """IRSA role, ServiceAccount, RBAC and Deployment of the Cluster Autoscaler.
    Needs the `aws` and `kubernetes` providers.

    Outputs: `image`, `role_arn`.
    """

    def __init__(
        self, name: str, args: ClusterAutoscalerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:capacity:ClusterAutoscaler", name, None, opts)
        s = args.settings
        image = image_for(s, args.kubernetes_version)
        if image is None:  # settings validation rejects this first
            raise ValueError(
                f"no Cluster Autoscaler image for Kubernetes {args.kubernetes_version}"
            )
        child = pulumi.ResourceOptions(parent=self)
        labels = meta.labels(NAME, NAME, "capacity")

        self.role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=iam.irsa_trust_policy(
                args.oidc_provider_arn, args.oidc_issuer_url, NAMESPACE, NAME
            ),
            description=f"Cluster Autoscaler of {args.cluster_name}",
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy", role=self.role.id, policy=iam_policy(args.cluster_name), opts=child
        )
        sa = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=meta.metadata(
                NAME, labels, NAMESPACE, {"eks.amazonaws.com/role-arn": self.role.arn}
            ),
            automount_service_account_token=False,
            opts=child,
        )
        cluster_role = k8s.rbac.v1.ClusterRole(
            f"{name}-clusterrole",
            metadata=meta.metadata(NAME, labels),
            rules=cluster_role_rules(),
            opts=child,
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-clusterrolebinding",
            metadata=meta.metadata(NAME, labels),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster_role, sa]),
        )
        role = k8s.rbac.v1.Role(
            f"{name}-role",
            metadata=meta.metadata(NAME, labels, NAMESPACE),
            rules=role_rules(),
            opts=child,
        )
        role_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-rolebinding",
            metadata=meta.metadata(NAME, labels, NAMESPACE),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role, sa]),
        )
        health = pod.HttpProbe("/health-check", "metrics", period_seconds=10, timeout_seconds=5)
        template = pod.pod_template(
            pod.PodSpec(
                labels=labels,
                containers=[
                    pod.Container(
                        name=NAME,
                        image=image,
                        command=command(args.cluster_name, s),
                        # Nodes allow one metadata hop: pods cannot ask IMDS for the region.
                        env={"AWS_REGION": args.region},
                        ports={"metrics": METRICS_PORT},
                        resources=pod.Resources(cpu="100m", memory="600Mi"),
                        probes=pod.Probes(readiness=health, liveness=health),
                    )
                ],
                priority_class="system-cluster-critical",
                service_account=NAME,
                # It talks to the API server with its service account token.
                automount_service_account_token=True,
                run_as_user=NOBODY,
                run_as_group=NOBODY,
            )
        )
        if args.node_selector:
            template["spec"]["nodeSelector"] = dict(args.node_selector)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta.metadata(NAME, labels, NAMESPACE, checkov_reasons(image)),
            spec={
                # One active autoscaler (it also elects a leader).
                "replicas": 1,
                "selector": {"matchLabels": meta.selector(labels)},
                "template": template,
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[binding, role_binding]),
        )
        self.image = image
        self.role_arn = self.role.arn
        self.register_outputs({"image": self.image, "role_arn": self.role_arn})


def checkov_reasons(image: str) -> dict[str, str]:
    reasons = {
        "CKV_K8S_11": "no CPU limit: a throttled autoscaler reacts late to pending pods",
        "CKV_K8S_38": "the autoscaler reads and updates nodes and pods through the API server "
        "with its service account token",
    }
    if "@sha256:" not in image:
        tag_only = (
            "pinned by release tag; registry.k8s.io digests could not be verified offline "
            "(capacity.clusterAutoscaler.image takes a digest-pinned reference)"
        )
        reasons["CKV_K8S_43"] = tag_only
        # Always would re-resolve the tag on every start; IfNotPresent keeps a
        # node on the image it pulled first.
        reasons["CKV_K8S_15"] = tag_only + ", pulled once per node"
    return meta.checkov_skips(reasons)
