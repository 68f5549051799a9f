"""Policy rules: each with compliant and violating input; the pack built from the
same rules; a violating stack failing the preview with exactly the expected rules;
random valid workloads never crashing a rule; enforcement overrides."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pulumi_policy import EnforcementLevel, Severity, StackValidationPolicy

from infra import pod
from policies import pack, rules
from policies.rules import PolicyConfig, Resource
from tests.helpers import base_config, preview_cli
from tools.preview import build_preview

FIXTURES = Path(__file__).parent / "fixtures"
CFG = PolicyConfig(
    max_gpus_per_pod=4, max_gpu_node_group_size=8, spot_priority_classes=("training-preemptible",)
)
IMAGE = "registry.example/app@sha256:" + "a" * 64


def template(gpus: int = 0, priority: str = "training-default", **overrides: Any) -> dict[str, Any]:
    t = pod.pod_template(
        pod.PodSpec(
            labels={"app": "x"},
            containers=[
                pod.Container("main", IMAGE, pod.Resources(cpu="1", memory="2Gi", gpus=gpus))
            ],
            priority_class=priority,
            spot_priority_classes=CFG.spot_priority_classes,
        )
    )
    t["spec"].update(overrides)
    return t


def k8s(
    kind: str,
    name: str,
    spec: dict[str, Any],
    namespace: str | None = "team",
    api: str = "apps/v1",
    labels: dict[str, str] | None = None,
) -> Resource:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    return Resource(
        f"kubernetes:{api}:{kind}",
        f"r-{name}",
        {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec},
    )


def deploy(t: dict[str, Any], name: str = "d", replicas: int = 1, **kw: Any) -> Resource:
    return k8s(
        "Deployment",
        name,
        {"replicas": replicas, "selector": {"matchLabels": {"app": "x"}}, "template": t},
        **kw,
    )


def node_group(
    types: list[str],
    ami: str = "AL2023_x86_64_NVIDIA",
    max_size: int = 2,
    capacity: str = "ON_DEMAND",
    taints: list[str] | None = None,
) -> Resource:
    if taints is None:
        taints = ["nvidia.com/gpu"] + (
            ["mlplatform.io/capacity-type"] if capacity == "SPOT" else []
        )
    keys = taints if types[0].startswith(("g", "p")) else []
    return Resource(
        "aws:eks/nodeGroup:NodeGroup",
        "ng",
        {
            "instanceTypes": types,
            "amiType": ami,
            "capacityType": capacity,
            "scalingConfig": {"minSize": 0, "maxSize": max_size, "desiredSize": 0},
            "taints": [{"key": k, "value": "true", "effect": "NO_SCHEDULE"} for k in keys],
            "labels": {"nvidia.com/gpu.present": "true"}
            if any(t.startswith(("g", "p")) for t in types)
            else {},
        },
    )


def quota(gpus: int, namespace: str = "team") -> Resource:
    return k8s(
        "ResourceQuota", "q", {"hard": {"requests.nvidia.com/gpu": str(gpus)}}, namespace, api="v1"
    )


def with_requests_only() -> dict[str, Any]:
    t = template(0)
    t["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    return t


def without(path: list[str | int], t: dict[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(t)
    target: Any = t
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return t


def container_field(t: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    t = copy.deepcopy(t)
    t["spec"]["containers"][0][key] = value
    return t


GPU_NODES = node_group(["g5.12xlarge"])  # 4 GPUs per node, 8 at maxSize 2


def node_pool(
    types: list[str] | None = None,
    spot: bool = False,
    taints: list[str] | None = None,
    limit: str | None = "8",
) -> Resource:
    if taints is None:
        taints = ["nvidia.com/gpu"] + (["mlplatform.io/capacity-type"] if spot else [])
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"nvidia.com/gpu.present": "true"}},
            "spec": {
                "requirements": [
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": types or ["g5.12xlarge"],
                    },
                    {
                        "key": "karpenter.sh/capacity-type",
                        "operator": "In",
                        "values": ["spot" if spot else "on-demand"],
                    },
                ],
                "taints": [{"key": k, "value": "true", "effect": "NoSchedule"} for k in taints],
            },
        },
    }
    if limit is not None:
        spec["limits"] = {"nvidia.com/gpu": limit}
    return k8s("NodePool", "gpu", spec, namespace=None, api="karpenter.sh/v1")


def launch_template(tokens: str = "required", hops: int = 1) -> Resource:
    return Resource(
        "aws:ec2/launchTemplate:LaunchTemplate",
        "lt",
        {"metadataOptions": {"httpTokens": tokens, "httpPutResponseHopLimit": hops}},
    )


def node_group_with_template() -> Resource:
    props = dict(GPU_NODES.props)
    props["launchTemplate"] = {"id": "lt-1", "version": "1"}
    return Resource(GPU_NODES.type, "ng-lt", props)


def node_class(hops: int = 1) -> Resource:
    return k8s(
        "EC2NodeClass",
        "gpu",
        {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": hops}},
        namespace=None,
        api="karpenter.k8s.aws/v1",
    )


def vpc_cni(enforce: bool) -> Resource:
    return Resource(
        "aws:eks/addon:Addon",
        "vpc-cni",
        {
            "addonName": "vpc-cni",
            "configurationValues": json.dumps({"enableNetworkPolicy": str(enforce).lower()}),
        },
    )


CLUSTER_AUTOSCALER = Resource(
    "kubernetes:apps/v1:Deployment",
    "ca",
    {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "cluster-autoscaler", "namespace": "kube-system"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ca",
                            "image": "registry.k8s.io/autoscaling/cluster-autoscaler:v1.35.2",
                        }
                    ]
                }
            }
        },
    },
)
KARPENTER_RELEASE = Resource(
    "kubernetes:helm.sh/v3:Release",
    "karpenter",
    {"chart": "oci://public.ecr.aws/karpenter/karpenter", "version": "1.14.1"},
)
INFERENCE = {"mlplatform.io/workload-kind": "inference"}
PDB = k8s(
    "PodDisruptionBudget",
    "pdb",
    {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "x"}}},
    api="policy/v1",
)
NS = k8s("Namespace", "team", {}, namespace=None, api="v1", labels={"mlplatform.io/team": "team"})
DENY = k8s(
    "NetworkPolicy",
    "default-deny",
    {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    api="networking.k8s.io/v1",
)
ALLOW_ALL = k8s(
    "NetworkPolicy",
    "open",
    {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}]},
    api="networking.k8s.io/v1",
)
JOB_OK = k8s(
    "Job",
    "j",
    {
        "backoffLimit": 2,
        "activeDeadlineSeconds": 60,
        "template": template(0, restartPolicy="Never"),
    },
    api="batch/v1",
)
LB = k8s("Service", "svc", {"type": "LoadBalancer", "ports": [{"port": 80}]}, api="v1")


def efa_group(
    types: list[str], subnets: int = 1, efa: bool = True, accelerator: str = "nvidia-h100"
) -> Resource:
    ng = node_group(types, max_size=2)
    props = dict(ng.props)
    props["labels"] = {
        **props["labels"],
        "k8s.amazonaws.com/accelerator": accelerator,
        **({"mlplatform.io/efa": "true"} if efa else {}),
    }
    props["subnetIds"] = [f"subnet-{i}" for i in range(subnets)]
    return Resource(ng.type, f"ng-{accelerator}", props)


def distributed_job(
    nodes: int, efa: bool, accelerators: tuple[str, ...] = ("nvidia-h100",)
) -> Resource:
    extended = {"vpc.amazonaws.com/efa": "32", "hugepages-2Mi": "5120Mi"} if efa else {}
    t = pod.pod_template(
        pod.PodSpec(
            labels={"app": "x"},
            containers=[
                pod.Container(
                    "main",
                    IMAGE,
                    pod.Resources(cpu="1", memory="2Gi", gpus=8, extended=extended),
                )
            ],
            priority_class="training-default",
            accelerators=accelerators,
            restart_policy="Never",
        )
    )
    return k8s(
        "Job",
        "train",
        {"completionMode": "Indexed", "parallelism": nodes, "completions": nodes, "template": t},
        api="batch/v1",
        labels={"mlplatform.io/workload-kind": "distributed-training"},
    )


P5 = efa_group(["p5.48xlarge"])
L40S = efa_group(["g6e.12xlarge"], efa=False, accelerator="nvidia-l40s")

# rule -> (compliant resources, violating resources, words in the violation)

# Kueue objects as the queueing rules see them.
KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = {"kueue.x-k8s.io/queue-name": "default"}


def kueue(
    kind: str,
    name: str,
    body: dict[str, Any],
    namespace: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Resource:
    meta: dict[str, Any] = {"name": name, "annotations": annotations or {}}
    if namespace:
        meta["namespace"] = namespace
    return Resource(
        f"kubernetes:{KUEUE}:{kind}",
        f"r-{kind}-{name}",
        {"apiVersion": KUEUE, "kind": kind, "metadata": meta, **body},
    )


def flavor(name: str = "gpu", capacity: int = 8) -> Resource:
    spec = {
        "nodeLabels": {"mlplatform.io/node-group": name},
        "nodeTaints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
    }
    return kueue(
        "ResourceFlavor",
        name,
        {"spec": spec},
        annotations={"mlplatform.io/gpu-capacity": str(capacity)},
    )


def cluster_queue(name: str, nominal: int, borrowing: int | None = 0) -> Resource:
    gpu: dict[str, Any] = {"name": "nvidia.com/gpu", "nominalQuota": str(nominal)}
    if borrowing is not None:
        gpu["borrowingLimit"] = str(borrowing)
    cpu = [
        {"name": r, "nominalQuota": v, "borrowingLimit": "0"}
        for r, v in (("cpu", "100"), ("memory", "1Ti"))
    ]
    spec = {
        "cohortName": "c",
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}},
        "resourceGroups": [
            {
                "coveredResources": ["nvidia.com/gpu"],
                "flavors": [{"name": "gpu", "resources": [gpu]}],
            },
            {"coveredResources": ["cpu", "memory"], "flavors": [{"name": "cpu", "resources": cpu}]},
        ],
    }
    return kueue("ClusterQueue", name, {"spec": spec})


def queued_job(
    gpus: int, pods: int = 1, labels: dict[str, str] | None = None, suspend: bool = True
) -> Resource:
    spec = {"parallelism": pods, "suspend": suspend, "template": template(gpus)}
    return k8s("Job", "j", spec, api="batch/v1", labels=QUEUE_LABEL if labels is None else labels)


QUEUES = [
    flavor(),
    kueue("ResourceFlavor", "cpu", {"spec": {}}),
    cluster_queue("team", 8),
    kueue("LocalQueue", "default", {"spec": {"clusterQueue": "team"}}, namespace="team"),
]

CASES: dict[str, tuple[list[Resource], list[Resource], str]] = {
    "gpu-in-limits": ([deploy(template(1))], [deploy(with_requests_only())], "sets no limit"),
    "gpu-per-pod-max": ([deploy(template(4))], [deploy(template(5))], "allows 4"),
    "gpu-pod-fits-node": (
        [GPU_NODES, deploy(template(4))],
        [GPU_NODES, deploy(template(8))],
        "largest GPU node in the stack has 4",
    ),
    "gpu-scheduling": (
        [
            deploy(template(1)),
            deploy(template(0)),
            k8s(
                "DaemonSet",
                "agent",
                {"template": template(0, tolerations=[{"operator": "Exists"}])},
            ),
        ],
        [
            deploy(
                template(
                    0,
                    tolerations=[
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                )
            ),
            deploy(without(["spec", "affinity"], template(1)), name="no-affinity"),
        ],
        "tolerates the nvidia.com/gpu taint",
    ),
    "gpu-priority-class": (
        [deploy(template(1))],
        [deploy(template(1, priorityClassName="urgent"))],
        "priorityClassName 'urgent'",
    ),
    "gpu-spot-placement": (
        [deploy(template(1, priority="training-preemptible"))],
        [
            deploy(
                template(
                    1,
                    tolerations=[
                        {
                            "key": "mlplatform.io/capacity-type",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        }
                    ],
                )
            )
        ],
        "spot allows training-preemptible",
    ),
    "gpu-system-namespaces": (
        [deploy(template(0), namespace="kube-system")],
        [deploy(template(1), namespace="default")],
        "namespace 'default'",
    ),
    "gpu-namespace-quota": (
        [quota(4), deploy(template(1))],
        [quota(4, "other"), deploy(template(1))],
        "no requests.nvidia.com/gpu quota",
    ),
    "gpu-quota-capacity": (
        [GPU_NODES, quota(8)],
        [GPU_NODES, quota(6), quota(6, "b")],
        "add up to 12",
    ),
    "gpu-always-on-demand": (
        [GPU_NODES, deploy(template(1), replicas=8)],
        [GPU_NODES, deploy(template(1), replicas=9)],
        "needs 9 GPUs",
    ),
    "gpu-node-group": (
        [
            GPU_NODES,
            node_group(["g5.xlarge"], capacity="SPOT"),
            node_group(["m5.large"], ami="AL2"),
        ],
        [
            node_group(["g5.xlarge"], ami="AL2023_x86_64_STANDARD"),
            node_group(["g5.xlarge"], capacity="SPOT", taints=["nvidia.com/gpu"]),
            node_group(["g5.xlarge"], max_size=9),
        ],
        "no NVIDIA driver",
    ),
    "container-resources": (
        [deploy(template(0))],
        [deploy(without(["spec", "containers", 0, "resources", "limits", "memory"], template(0)))],
        "limits.memory",
    ),
    "image-pinned": (
        [deploy(container_field(template(0), "image", "r.example/a:1.2"))],
        [deploy(container_field(template(0), "image", "r.example/a:latest"))],
        "not pinned",
    ),
    "inference-readiness": (
        [
            deploy(
                container_field(
                    container_field(
                        template(1), "readinessProbe", {"httpGet": {"path": "/r", "port": 8080}}
                    ),
                    "livenessProbe",
                    {"tcpSocket": {"port": 8080}},
                ),
                labels=INFERENCE,
            )
        ],
        [deploy(template(1), labels=INFERENCE)],
        "no readinessProbe",
    ),
    "inference-pdb": (
        [deploy(template(1), labels=INFERENCE), PDB],
        [deploy(template(1), labels=INFERENCE)],
        "no PodDisruptionBudget",
    ),
    "job-limits": (
        [JOB_OK],
        [k8s("Job", "j", {"template": template(0, restartPolicy="Never")}, api="batch/v1")],
        "no backoffLimit",
    ),
    "namespace-default-deny": ([NS, DENY], [NS, ALLOW_ALL], "no default-deny"),
    "pod-security-restricted": (
        [deploy(template(0))],
        [
            deploy(template(0, hostNetwork=True)),
            deploy(container_field(template(0), "securityContext", {"privileged": True}), name="p"),
        ],
        "hostNetwork is true",
    ),
    "no-load-balancer": (
        [k8s("Service", "svc", {"type": "ClusterIP"}, api="v1")],
        [LB],
        "LoadBalancer",
    ),
    "queue-gpu-jobs": (
        [NS, *QUEUES, queued_job(1)],
        [NS, *QUEUES, queued_job(1, labels={}), queued_job(1, suspend=False)],
        "without the kueue.x-k8s.io/queue-name label",
    ),
    "queue-nominal-capacity": (
        [flavor(capacity=8), cluster_queue("a", 4), cluster_queue("b", 4)],
        [flavor(capacity=8), cluster_queue("a", 6), cluster_queue("b", 4)],
        "add up to 10; the pool provides 8",
    ),
    "queue-borrowing-cohort": (
        [flavor(), cluster_queue("a", 4, borrowing=2), cluster_queue("b", 4)],
        [flavor(), cluster_queue("a", 4, borrowing=None), cluster_queue("b", 4)],
        "unlimited borrowing of nvidia.com/gpu in 'gpu' reaches the cohort's whole 8",
    ),
    "queue-admissible": (
        [*QUEUES, queued_job(4, pods=2)],
        [*QUEUES, queued_job(4, pods=3)],
        "needs 12 nvidia.com/gpu in 'gpu' (at most 8",
    ),
    "gpu-capacity-autoscaled": (
        [GPU_NODES, CLUSTER_AUTOSCALER],
        [GPU_NODES, node_pool()],
        "no autoscaler",
    ),
    "gpu-node-pool": (
        [node_pool()],
        [node_pool(types=["m7i.large", "g5.xlarge"], spot=True, taints=["nvidia.com/gpu"])],
        "has no GPU",
    ),
    "node-imdsv2": (
        [launch_template(), node_group_with_template(), node_class()],
        [launch_template(tokens="optional", hops=2), GPU_NODES, node_class(hops=2)],
        "hop limit 2",
    ),
    "network-policy-enforced": (
        [NS, DENY, vpc_cni(True)],
        [NS, DENY, vpc_cni(False)],
        "nothing in this cluster enforces them",
    ),
    "efa-multi-node": (
        [
            P5,
            L40S,
            distributed_job(4, efa=True),
            distributed_job(1, efa=False),  # one node: no fabric needed
            distributed_job(2, efa=False, accelerators=("nvidia-l40s",)),  # no EFA type
        ],
        [P5, L40S, distributed_job(4, efa=False)],
        "without requesting vpc.amazonaws.com/efa",
    ),
    "efa-single-zone": (
        [P5, efa_group(["g6e.12xlarge"], subnets=3, efa=False)],
        [efa_group(["p5.48xlarge"], subnets=2)],
        "spans 2 subnets",
    ),
}


def test_efa_multi_node_sees_efa_disabled_on_an_efa_type() -> None:
    """A p5 group with EFA turned off is still an EFA-capable type: multi-node
    training there without EFA is the waste the rule exists for."""
    p5_plain = efa_group(["p5.48xlarge"], efa=False)
    found = _findings("efa-multi-node", [p5_plain, distributed_job(2, efa=False)])
    assert len(found) == 1 and found[0].level == "mandatory"
    # Any GPU node (no accelerator pinned) may be the L40S one: not reported.
    unpinned = distributed_job(2, efa=False, accelerators=())
    assert _findings("efa-multi-node", [P5, L40S, unpinned]) == []


def efa_node_pool(
    types: list[str], accelerator: str, zones: list[str] | None, efa: bool = True
) -> Resource:
    """A Karpenter NodePool as infra/karpenter.py renders an (EFA) GPU group."""
    np = node_pool(types=types)
    spec = json.loads(json.dumps(np.props["spec"]))
    spec["template"]["metadata"]["labels"] = {
        "nvidia.com/gpu.present": "true",
        "k8s.amazonaws.com/accelerator": accelerator,
        **({"mlplatform.io/efa": "true"} if efa else {}),
    }
    if zones is not None:
        spec["template"]["spec"]["requirements"].append(
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": zones}
        )
    return k8s("NodePool", f"pool-{accelerator}", spec, namespace=None, api="karpenter.sh/v1")


def efa_node_class(subnet_terms: list[dict[str, Any]]) -> Resource:
    nics = [
        {"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"},
        {"networkCardIndex": 0, "deviceIndex": 1, "interfaceType": "efa-only"},
    ]
    return k8s(
        "EC2NodeClass",
        "efa",
        {"networkInterfaces": nics, "subnetSelectorTerms": subnet_terms},
        namespace=None,
        api="karpenter.k8s.aws/v1",
    )


def test_efa_multi_node_sees_karpenter_node_pools() -> None:
    p5 = efa_node_pool(["p5.48xlarge"], "nvidia-h100", ["us-west-2a"])
    l40s = efa_node_pool(["g6e.12xlarge"], "nvidia-l40s", None, efa=False)
    found = _findings("efa-multi-node", [p5, l40s, distributed_job(4, efa=False)])
    assert len(found) == 1 and "without requesting vpc.amazonaws.com/efa" in found[0].message
    assert _findings("efa-multi-node", [p5, l40s, distributed_job(4, efa=True)]) == []
    # Only an L40S pool for the pinned job: no EFA type, nothing to report.
    l40s_job = distributed_job(2, efa=False, accelerators=("nvidia-l40s",))
    assert _findings("efa-multi-node", [p5, l40s, l40s_job]) == []


def test_efa_single_zone_sees_karpenter_pools_and_node_classes() -> None:
    one_zone = efa_node_pool(["p5.48xlarge"], "nvidia-h100", ["us-west-2a"])
    good_class = efa_node_class([{"id": "subnet-1"}])
    assert _findings("efa-single-zone", [one_zone, good_class]) == []
    any_zone = efa_node_pool(["p5.48xlarge"], "nvidia-h100", None)
    two_zones = efa_node_pool(["p5.48xlarge"], "nvidia-h100", ["us-west-2a", "us-west-2b"])
    by_tags = efa_node_class([{"tags": {"karpenter.sh/discovery": "c"}}])
    two_ids = efa_node_class([{"id": "subnet-1"}, {"id": "subnet-2"}])
    found = _findings("efa-single-zone", [any_zone, two_zones, by_tags, two_ids])
    assert len(found) == 4 and all(f.level == "mandatory" for f in found)
    assert sum("topology.kubernetes.io/zone" in f.message for f in found) == 2
    assert sum("one subnet (by id)" in f.message for f in found) == 2
    # A plain pool spans zones freely.
    plain = efa_node_pool(["g6e.12xlarge"], "nvidia-l40s", None, efa=False)
    assert _findings("efa-single-zone", [plain]) == []


def test_queue_admission_ignores_what_kueue_is_told_to_exclude() -> None:
    """An EFA job asks for vpc.amazonaws.com/efa and huge pages, which no
    ClusterQueue covers: Kueue admits it only when its Configuration excludes
    them, and the simulation reads that from the Kueue release."""
    efa_job = distributed_job(2, efa=True)
    efa_job.props["metadata"]["labels"].update(QUEUE_LABEL)
    efa_job.props["spec"]["suspend"] = True
    queues = [flavor(capacity=16), *QUEUES[1:2], cluster_queue("team", 16), QUEUES[3]]
    without = _findings("queue-admissible", [*queues, efa_job])
    assert len(without) == 1 and "asks for" in without[0].message
    config = {"resources": {"excludeResourcePrefixes": ["vpc.amazonaws.com/efa", "hugepages-"]}}
    release = Resource(
        "kubernetes:helm.sh/v3:Release",
        "kueue",
        {
            "chart": "oci://registry.k8s.io/kueue/charts/kueue",
            "values": {"managerConfig": {"controllerManagerConfigYaml": json.dumps(config)}},
        },
    )
    assert _findings("queue-admissible", [*queues, release, efa_job]) == []


def test_digest_waiver_only_for_kube_system_daemonsets() -> None:
    cfg = PolicyConfig(require_image_digests=True)
    efa = "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/aws-efa-k8s-device-plugin"
    t = container_field(template(0), "image", f"{efa}:v0.5.20")
    t["metadata"]["annotations"] = {"mlplatform.io/digest-waiver": "no published digest"}
    waived = k8s("DaemonSet", "plugin", {"template": t}, namespace="kube-system")
    assert _findings("image-pinned", [waived], cfg) == []
    elsewhere = k8s("DaemonSet", "plugin", {"template": t}, namespace="team")
    assert _findings("image-pinned", [elsewhere], cfg)
    deployment = k8s("Deployment", "plugin", {"template": t}, namespace="kube-system")
    assert _findings("image-pinned", [deployment], cfg)
    # Only AWS's EFA device plugin image: not any image a waiver names.
    for image in (
        "r.example/plugin:v0.5.20",
        "r.example/eks/aws-efa-k8s-device-plugin:v0.5.20",
        f"{efa}:latest",
        f"{efa}:main",
    ):
        other = container_field(t, "image", image)
        other_ds = k8s("DaemonSet", "plugin", {"template": other}, namespace="kube-system")
        assert _findings("image-pinned", [other_ds], cfg), image
    no_reason = container_field(template(0), "image", f"{efa}:v0.5.20")
    bare = k8s("DaemonSet", "plugin", {"template": no_reason}, namespace="kube-system")
    assert _findings("image-pinned", [bare], cfg)


def test_every_rule_has_cases() -> None:
    assert set(CASES) == set(rules.RULE_NAMES)


def _findings(rule: str, resources: list[Resource], cfg: PolicyConfig = CFG) -> list[rules.Finding]:
    return [f for f in rules.evaluate(resources, cfg) if f.policy == rule]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_compliant_input_passes(rule: str) -> None:
    compliant, _, _ = CASES[rule]
    assert _findings(rule, compliant) == []


@pytest.mark.parametrize("rule", sorted(CASES))
def test_violating_input_is_reported(rule: str) -> None:
    _, violating, words = CASES[rule]
    found = _findings(rule, violating)
    assert found, f"{rule} reported nothing"
    assert any(words in f.message for f in found), [f.message for f in found]
    r = rules.RULES_BY_NAME[rule]
    assert all(
        f.level == r.enforcement and f.severity == r.severity and f.remediation == r.remediation
        for f in found
    )


def test_configured_thresholds_change_the_verdict() -> None:
    lb = [LB]
    assert _findings("no-load-balancer", lb, PolicyConfig(allow_load_balancers=True)) == []
    tagged = [deploy(container_field(template(0), "image", "r.example/a:1.2"))]
    assert _findings("image-pinned", tagged, PolicyConfig(require_image_digests=True))
    assert not _findings(
        "image-pinned", [deploy(template(0))], PolicyConfig(require_image_digests=True)
    )
    over = [GPU_NODES, quota(12)]
    assert _findings("gpu-quota-capacity", over)
    assert not _findings("gpu-quota-capacity", over, PolicyConfig(gpu_quota_overcommit=1.5))


def test_unknown_values_are_skipped() -> None:
    """During a real preview an image digest or size may be unknown (None)."""
    t = container_field(template(0), "image", None)
    assert _findings("image-pinned", [deploy(t)], PolicyConfig(require_image_digests=True)) == []
    ng = node_group(["g5.xlarge"])
    ng.props["scalingConfig"]["maxSize"] = None  # type: ignore[index]
    assert _findings("gpu-node-group", [ng]) == []


def test_rules_have_metadata() -> None:
    for r in rules.RULES:
        assert r.description and r.remediation
        assert r.enforcement in ("mandatory", "advisory")
        assert r.severity in ("critical", "high", "medium", "low")
        assert (r.resource_check is None) != (r.stack_check is None)
        assert set(r.config_keys) <= set(PolicyConfig.keys())


# -- the policy pack --------------------------------------------------------------


def test_pack_builds_one_policy_per_rule() -> None:
    policies = pack.build_policies()
    assert [p.name for p in policies] == list(rules.RULE_NAMES)
    for p, r in zip(policies, rules.RULES, strict=True):
        assert p.description == r.description
        assert p.enforcement_level == EnforcementLevel(r.enforcement)
        assert p.severity == Severity(r.severity)
        assert p.remediation_steps == r.remediation
        assert isinstance(p, StackValidationPolicy) == (r.stack_check is not None)
        schema = p.config_schema
        assert (set(schema.properties) if schema else set()) == set(r.config_keys)


class _Args:
    def __init__(
        self,
        resource: Resource | None = None,
        config: dict[str, Any] | None = None,
        resources: list[Resource] | None = None,
    ) -> None:
        if resource is not None:
            self.resource_type, self.name, self.props = resource.type, resource.name, resource.props
        self.resources = [
            type(
                "R",
                (),
                {"resource_type": r.type, "name": r.name, "props": r.props, "urn": f"urn:{r.name}"},
            )()
            for r in resources or []
        ]
        self._config = config or {}

    def get_config(self) -> dict[str, Any]:
        return self._config


def test_pack_validators_call_the_rules_with_the_policy_config() -> None:
    reports: list[tuple[str, str | None]] = []
    validate = pack._resource_validator(rules.RULES_BY_NAME["gpu-per-pod-max"])
    validate(
        _Args(deploy(template(3)), {"maxGpusPerPod": 2, "enforcementLevel": "mandatory"}),  # type: ignore[arg-type]
        lambda message, urn=None: reports.append((message, urn)),
    )
    assert reports == [
        ("spec.template.spec asks for 3 GPUs per pod; this environment allows 2", None)
    ]
    reports.clear()
    stack = pack._stack_validator(rules.RULES_BY_NAME["gpu-namespace-quota"])
    stack(
        _Args(resources=[deploy(template(1))]),  # type: ignore[arg-type]
        lambda message, urn=None: reports.append((message, urn)),
    )
    assert reports == [
        ("runs GPU pods in namespace 'team', which has no requests.nvidia.com/gpu quota", "urn:r-d")
    ]


def test_policy_config_files_are_current() -> None:
    from tools import policy

    assert policy.main(["--check"]) == 0, "run `make policy-config`"
    prod = json.loads((Path(__file__).parent.parent / "policies/config/prod.json").read_text())
    assert set(prod) == set(rules.RULE_NAMES)
    assert prod["image-pinned"] == {"enforcementLevel": "mandatory", "requireImageDigests": True}


# -- the offline runner ------------------------------------------------------------


def _preview(
    tmp_path: Path, config: dict[str, Any], program: Path | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    code, out = preview_cli(tmp_path, config, program)
    return code, json.loads((out / "policy.json").read_text()), (out / "plan.md").read_text()


def test_violating_stack_fails_with_exactly_the_expected_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The one advisory rule, made mandatory here so that every finding fails.
    config = base_config(policy={"enforcement": {"queue-borrowing-cohort": "mandatory"}})
    code, findings, plan = _preview(tmp_path, config, FIXTURES / "violating_program.py")
    assert code == 1
    assert {f["policy"] for f in findings} == set(rules.RULE_NAMES)
    assert all(f["level"] == "mandatory" for f in findings)
    by_rule = {f["policy"]: f for f in findings}
    assert by_rule["no-load-balancer"]["resource"] == "vision/Service/public"
    assert by_rule["gpu-system-namespaces"]["resource"] == "default/Deployment/gpu-in-default"
    err = capsys.readouterr().err
    assert "mandatory: [gpu-in-limits] vision/Deployment/gpu-requests-only:" in err
    assert "| mandatory | `no-load-balancer` | `vision/Service/public` |" in plan


def test_advisory_findings_do_not_fail_the_preview(tmp_path: Path) -> None:
    config = base_config(policy={"enforcement": {name: "advisory" for name in rules.RULE_NAMES}})
    code, findings, plan = _preview(tmp_path, config, FIXTURES / "violating_program.py")
    assert code == 0
    assert {f["level"] for f in findings} == {"advisory"}
    assert "| advisory | `gpu-in-limits` |" in plan


def test_disabled_rules_report_nothing(tmp_path: Path) -> None:
    config = base_config(policy={"enforcement": {name: "disabled" for name in rules.RULE_NAMES}})
    code, findings, _ = _preview(tmp_path, config, FIXTURES / "violating_program.py")
    assert (code, findings) == (0, [])


def test_unknown_rule_in_enforcement_is_a_config_error() -> None:
    from infra.config_types import ConfigError
    from mlplatform.loading import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(base_config(policy={"enforcement": {"gpu-in-limit": "advisory"}}), "dev")
    ((path, message),) = info.value.problems
    assert path == 'mlplatform:policy.enforcement["gpu-in-limit"]'
    assert "did you mean 'gpu-in-limits'" in message


# -- property: the platform's own output never breaks a rule --------------------------

PRIORITY = st.sampled_from(["training-high", "training-default", "training-preemptible"])
NAMES = st.text("abcdefghij", min_size=1, max_size=6)


@st.composite
def workload(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["training", "distributed", "inference", "batch"]))
    gpus = draw(st.integers(0, 1))
    spec: dict[str, Any] = {
        "kind": kind,
        "name": f"w{index}-{draw(NAMES)}",
        "team": "vision",
        "gpus": gpus,
        "cpu": draw(st.sampled_from(["500m", "1", "4"])),
        "memory": draw(st.sampled_from(["2Gi", "8Gi", "16Gi"])),
    }
    model = {"uri": "s3://models/m/v1"}
    if kind == "training":
        spec["priorityClass"] = draw(PRIORITY)
        if draw(st.booleans()):
            spec["schedule"] = draw(st.sampled_from(["0 3 * * *", "*/30 * * * *", "@daily"]))
    elif kind == "distributed":
        spec |= {
            "nodes": draw(st.integers(1, 3)),
            "priorityClass": draw(PRIORITY),
            "checkpoint": {"claim": "shared-checkpoints"},
            "backend": draw(st.sampled_from(["indexed-job", "pytorchjob"])),
        }
    elif kind == "inference":
        low = draw(st.integers(1, 2))
        spec |= {"model": model, "minReplicas": low, "maxReplicas": draw(st.integers(low, 4))}
        if draw(st.booleans()):
            spec["canary"] = {"weight": draw(st.integers(1, 50)), "modelUri": "s3://models/m/v2"}
    else:
        shards = draw(st.integers(1, 20))
        spec |= {
            "model": model,
            "input": "s3://in/x",
            "output": "s3://out/x",
            "shards": shards,
            "parallelism": draw(st.integers(1, shards)),
        }
    return spec


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(*[workload(i) for i in range(n)])))
def test_random_valid_workloads_never_crash_or_break_a_rule(
    workloads: tuple[dict[str, Any], ...],
) -> None:
    config = base_config(
        runtimeImage={"build": {}},
        workloads=list(workloads),
        teams=[{"name": "vision", "quota": {"gpus": 4, "overcommit": True}}],
        policy={"gpuQuotaOvercommit": 10},
    )
    preview = build_preview("prop", config)
    capacity_rules = {"gpu-always-on-demand"}  # random replica counts may exceed 4 GPUs
    assert [f for f in preview.findings if f["policy"] not in capacity_rules] == []
    for f in preview.findings:
        assert f["policy"] in rules.RULE_NAMES


def test_pack_imports_only_what_its_virtualenv_has() -> None:
    """policies/requirements.txt has pulumi and pulumi-policy only: the rules must
    not reach pydantic, the provider SDKs or the settings model."""
    import subprocess
    import sys

    absent = ("pydantic", "pulumi_kubernetes", "pulumi_aws", "pulumi_docker_build", "torch")
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {absent!r}:\n"
        "            raise ImportError('not in the policy pack venv: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from policies.pack import build_policies\n"
        "print(len(build_policies()))\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", blocker],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(rules.RULES))


def test_inference_probes_must_check_declared_ports() -> None:
    """A probe on a port the server does not declare never succeeds: the pod never
    becomes Ready (or is restarted forever)."""
    t = container_field(template(1), "ports", [{"name": "http", "containerPort": 8000}])
    t = container_field(t, "readinessProbe", {"httpGet": {"path": "/health", "port": "http"}})
    ok = container_field(t, "livenessProbe", {"tcpSocket": {"port": 8000}})
    assert _findings("inference-readiness", [deploy(ok, labels=INFERENCE)]) == []
    bad = container_field(t, "livenessProbe", {"grpc": {"port": 8001}})
    (finding,) = _findings("inference-readiness", [deploy(bad, labels=INFERENCE)])
    assert "livenessProbe checks port 8001" in finding.message
    no_liveness = deploy(t, labels=INFERENCE)
    (finding,) = _findings("inference-readiness", [no_liveness])
    assert "has no livenessProbe" in finding.message
