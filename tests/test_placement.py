"""Every workload of every shipped stack has somewhere to run.

For each pod template the stack renders in a team namespace, some GPU pool
(a Karpenter NodePool or a managed node group) or the system node group must
take it: every taint of the pool tolerated, the required node affinity and
nodeSelector satisfiable by the labels the pool's nodes get, GPUs per pod no
more than GPUs per node, CPU and memory requests within the largest
instance type of the pool, and every other extended resource (EFA interfaces,
huge pages) provided by the pool's nodes as its autoscaler sees them (a node
group's node-template tags; a NodePool's EC2NodeClass interfaces and its
NodeOverlay). This is what keeps infra/scheduling.py (pods) and
infra/gpu_nodes.py / infra/karpenter.py / infra/efa.py (nodes) in agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infra import catalog, instances, quantity
from policies import rules
from tools.offline import ROOT, Run, read_stack_config, run_program

STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))
AWS_EFFECTS = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": ""}


@dataclass
class Pool:
    name: str
    labels: dict[str, set[str]]  # label -> values its nodes may carry
    taints: list[dict[str, str]]
    gpus_per_node: int
    types: list[instances.GpuInstanceType] = field(default_factory=list)
    # Extended resources other than GPUs a node provides (vpc.amazonaws.com/efa,
    # hugepages-2Mi), as the pool's autoscaler knows them.
    extended: dict[str, float] = field(default_factory=dict)


CA_RESOURCES = "k8s.io/cluster-autoscaler/node-template/resources/"
BASIC_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def _node_group_pool(props: Mapping[str, Any], name: str, tags: Mapping[str, str]) -> Pool:
    types = [t for n in props.get("instanceTypes") or [] if (t := instances.lookup(n))]
    labels = {k: {v} for k, v in (props.get("labels") or {}).items()}
    labels["node.kubernetes.io/instance-type"] = set(props.get("instanceTypes") or [])
    taints = [
        {"key": t["key"], "value": t.get("value", ""), "effect": AWS_EFFECTS[t["effect"]]}
        for t in props.get("taints") or []
        if AWS_EFFECTS[t["effect"]]
    ]
    extended = {
        key.removeprefix(CA_RESOURCES): float(quantity.parse(value))
        for key, value in tags.items()
        if key.startswith(CA_RESOURCES)
    }
    return Pool(name, labels, taints, max((t.gpus for t in types), default=0), types, extended)


def _node_pool(manifest: Mapping[str, Any], run: Run) -> Pool:
    """What Karpenter thinks a NodePool's nodes provide: EFA devices from its
    EC2NodeClass's `efa-only` interfaces, anything else from NodeOverlays that
    select the pool."""
    spec = manifest["spec"]["template"]
    node_class = next(
        m
        for m in run.manifests()
        if m["kind"] == "EC2NodeClass"
        and m["metadata"]["name"] == spec["spec"]["nodeClassRef"]["name"]
    )
    extended: dict[str, float] = {}
    interfaces = node_class["spec"].get("networkInterfaces") or []
    efa_only = [n for n in interfaces if n["interfaceType"] == "efa-only"]
    if efa_only:
        extended["vpc.amazonaws.com/efa"] = float(len(efa_only))
    for overlay in (m for m in run.manifests() if m["kind"] == "NodeOverlay"):
        if {
            "key": "karpenter.sh/nodepool",
            "operator": "In",
            "values": [manifest["metadata"]["name"]],
        } in overlay["spec"]["requirements"]:
            for name, value in overlay["spec"].get("capacity", {}).items():
                extended[name] = float(quantity.parse(value))
    labels = {k: {v} for k, v in spec["metadata"]["labels"].items()}
    for r in spec["spec"]["requirements"]:
        assert r["operator"] == "In"
        labels[r["key"]] = set(r["values"])
    types = [t for n in labels["node.kubernetes.io/instance-type"] if (t := instances.lookup(n))]
    return Pool(
        manifest["metadata"]["name"],
        labels,
        list(spec["spec"].get("taints") or []),
        max(t.gpus for t in types),
        types,
        extended,
    )


def pools(run: Run) -> list[Pool]:
    tags: dict[str, dict[str, str]] = {}
    for t in run.by_type("aws:autoscaling/tag:Tag"):
        tag = t.inputs["tag"]
        tags.setdefault(run.parent_name(t) or "", {})[tag["key"]] = tag["value"]
    out = [
        _node_group_pool(r.inputs, r.name, tags.get(run.parent_name(r) or "", {}))
        for r in run.by_type("aws:eks/nodeGroup:NodeGroup")
    ]
    out += [_node_pool(m, run) for m in run.manifests() if m["kind"] == "NodePool"]
    return out


def extended_requests(pod: Mapping[str, Any]) -> dict[str, float]:
    """Per pod: extended resources other than GPUs (EFA interfaces, huge pages)."""
    out: dict[str, float] = {}
    for c in pod.get("containers") or []:
        r = c.get("resources") or {}
        for name, value in {**(r.get("limits") or {}), **(r.get("requests") or {})}.items():
            if name in BASIC_RESOURCES or catalog.is_gpu_resource(name):
                continue
            out[name] = out.get(name, 0.0) + float(quantity.parse(value))
    return out


def _tolerates(pod: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    for t in pod.get("tolerations") or []:
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint["value"]:
            return True
    return False


def _expression_ok(e: Mapping[str, Any], labels: Mapping[str, set[str]]) -> bool:
    values = labels.get(e["key"])
    op = e["operator"]
    if op == "In":
        return values is not None and bool(values & set(e["values"]))
    if op == "NotIn":
        return values is None or bool(values - set(e["values"]))
    if op == "Exists":
        return values is not None
    if op == "DoesNotExist":
        return values is None
    raise AssertionError(f"operator {op} not modelled")


def why_not(pod: Mapping[str, Any], pool: Pool) -> str | None:
    """Why `pool` cannot take `pod` (None: it can)."""
    for taint in pool.taints:
        if not _tolerates(pod, taint):
            return f"taint {taint['key']} not tolerated"
    for key, value in (pod.get("nodeSelector") or {}).items():
        if value not in pool.labels.get(key, set()):
            return f"nodeSelector {key}={value}"
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(
        all(_expression_ok(e, pool.labels) for e in t.get("matchExpressions") or []) for t in terms
    ):
        return "required node affinity"
    gpus = rules.gpus_per_pod(pod)
    if gpus > pool.gpus_per_node:
        return f"{gpus} GPUs per pod, {pool.gpus_per_node} per node"
    for name, amount in extended_requests(pod).items():
        if amount > pool.extended.get(name, 0.0):
            return f"{amount:g} {name} per pod, {pool.extended.get(name, 0.0):g} per node"
    if pool.types:
        biggest = max(pool.types, key=lambda t: (t.vcpus, t.memory_gib))
        cpu = sum(
            float(
                quantity.parse(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))
            )
            for c in pod.get("containers") or []
        )
        mem = sum(
            float(
                quantity.parse(
                    ((c.get("resources") or {}).get("requests") or {}).get("memory", "0")
                )
            )
            for c in pod.get("containers") or []
        )
        if cpu > biggest.vcpus or mem > biggest.memory_gib * 2**30:
            return f"requests {cpu:g} CPU / {mem / 2**30:g} GiB exceed {biggest.name}"
    return None


@pytest.fixture(scope="module", params=STACKS)
def stack_run(request: pytest.FixtureRequest) -> tuple[str, Run]:
    stack: str = request.param
    return stack, run_program(stack, read_stack_config(ROOT / f"Pulumi.{stack}.yaml"))


def test_every_workload_pod_has_a_pool(stack_run: tuple[str, Run]) -> None:
    stack, run = stack_run
    available = pools(run)
    assert any(p.gpus_per_node for p in available), f"{stack}: no GPU pool"
    team_namespaces = {
        m["metadata"]["name"]
        for m in run.manifests()
        if m["kind"] == "Namespace" and "mlplatform.io/team" in m["metadata"].get("labels", {})
    }
    checked = 0
    stranded: list[str] = []
    for record in run.kubernetes_objects:
        res = rules.Resource(record.type, record.name, record.inputs)
        if res.namespace not in team_namespaces:
            continue
        for t in rules.pod_templates(res):
            checked += 1
            reasons = {p.name: why_not(t.spec, p) for p in available}
            if all(reasons.values()):
                stranded.append(f"{res.label} {t.where}: {reasons}")
    assert checked >= 4, f"{stack}: only {checked} pod templates found"
    assert not stranded, "\n".join(stranded)


def test_gpu_pods_land_only_on_gpu_pools(stack_run: tuple[str, Run]) -> None:
    """The other direction: pods without GPUs never fit a GPU pool (its taint)."""
    _, run = stack_run
    gpu_pools = [p for p in pools(run) if p.gpus_per_node]
    for record in run.kubernetes_objects:
        res = rules.Resource(record.type, record.name, record.inputs)
        for t in rules.pod_templates(res):
            if res.kind != "DaemonSet" and not rules.gpus_per_pod(t.spec):
                assert all(why_not(t.spec, p) for p in gpu_pools), res.label


def test_stacks_cover_both_autoscalers() -> None:
    modes = set()
    for stack in STACKS:
        config = read_stack_config(ROOT / f"Pulumi.{stack}.yaml")
        modes.add((config.get("mlplatform:capacity") or {}).get("autoscaler"))
    assert {"karpenter", "cluster-autoscaler"} <= modes


def test_a_pool_that_drops_the_spot_toleration_strands_the_pod(tmp_path: Path) -> None:
    """The check is not vacuous: a spot pool, and a pod that may not use spot."""
    pool = Pool(
        "spot",
        {"nvidia.com/gpu.present": {"true"}},
        [
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
            {"key": "mlplatform.io/capacity-type", "value": "spot", "effect": "NoSchedule"},
        ],
        1,
    )
    pod = {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    }
    assert why_not(pod, pool) == "taint mlplatform.io/capacity-type not tolerated"


def test_efa_pods_need_a_pool_that_provides_efa_and_huge_pages() -> None:
    """Not vacuous either: prod's EFA job fits the h100 NodePool only with the
    interfaces of its EC2NodeClass and the huge pages of its NodeOverlay."""
    run = run_program("prod", read_stack_config(ROOT / "Pulumi.prod.yaml"))
    (h100,) = [p for p in pools(run) if p.name == "h100"]
    assert h100.extended == {"vpc.amazonaws.com/efa": 32.0, "hugepages-2Mi": 5120 * 2**20}
    job = next(
        rules.pod_templates(rules.Resource(r.type, r.name, r.inputs))[0].spec
        for r in run.kubernetes_objects
        if r.inputs.get("kind") == "Job" and r.inputs["metadata"]["name"] == "llm-pretrain"
    )
    assert extended_requests(job)["vpc.amazonaws.com/efa"] == 32
    assert why_not(job, h100) is None
    no_overlay = Pool(h100.name, h100.labels, h100.taints, h100.gpus_per_node, h100.types, {})
    assert why_not(job, no_overlay) == "32 vpc.amazonaws.com/efa per pod, 0 per node"
