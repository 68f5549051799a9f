"""plan.md: the human summary of an offline preview, for pull-request review."""

from __future__ import annotations

from collections import Counter

from infra import catalog, cluster_autoscaler, karpenter, scheduling
from infra.gpu_nodes import advertised_gpus, time_slicing
from mlplatform.settings import PlatformSettings
from policies import queue_sim
from tools.policy import resources
from tools.result import Preview
from workloads.nccl_test import NcclTestSpec


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else ("n/a" if part == 0 else "no capacity")


def _autoscaling(s: PlatformSettings) -> list[str]:
    """How the GPU groups get nodes: the autoscaler, and per Karpenter pool what
    it may launch."""
    auto = s.autoscaler
    out = ["", "### Autoscaling", ""]
    if auto == "karpenter":
        out.append(
            f"Karpenter {karpenter.VERSION} (chart `{karpenter.CHART}`) launches nodes for "
            "pending pods; each group is a NodePool + EC2NodeClass (minSize 0, the GPU limit "
            "is maxSize x GPUs per node)."
        )
        out.append("")
        rows = []
        for g in s.gpu_node_groups:
            pool = karpenter.node_pool_spec(g, s.capacity.karpenter)
            reqs = {r["key"]: r["values"] for r in pool["template"]["spec"]["requirements"]}
            rows.append(
                [
                    g.name,
                    ", ".join(reqs[karpenter.INSTANCE_TYPE_LABEL]),
                    ", ".join(reqs[karpenter.CAPACITY_TYPE_LABEL]),
                    pool["limits"]["nvidia.com/gpu"],
                    "<br>".join(f"`{t}`" for t in scheduling.gpu_node_taints(g.is_spot)),
                    pool["disruption"]["consolidationPolicy"],
                    karpenter.ami_alias(g, s.capacity.karpenter),
                ]
            )
        out += _table(
            [
                "NodePool",
                "instance types",
                "capacity types",
                "GPU limit",
                "taints",
                "consolidation",
                "AMI",
            ],
            rows,
        )
    elif auto == "cluster-autoscaler":
        image = cluster_autoscaler.image_for(
            s.capacity.cluster_autoscaler, s.cluster.kubernetes_version
        )
        out.append(
            f"Cluster Autoscaler `{image}` resizes the managed node groups above (expander "
            f"`{s.capacity.cluster_autoscaler.expander}`), found by their ASG tags."
        )
    else:
        out.append(
            "No autoscaler installed by the stack"
            + (
                " (the cluster's own discovers the node groups)."
                if s.capacity.external_autoscaler
                else ": node groups stay at their sizes."
            )
        )
    return out


def _time_slicing(s: PlatformSettings) -> str:
    """Which groups time-slice their GPUs, and how (the stack-wide setting or their own)."""
    sliced = []
    for g in s.gpu_node_groups:
        if (ts := time_slicing(g, s.device_plugin)) is not None:
            shared = " as `nvidia.com/gpu.shared`" if ts.rename_by_default else ""
            sliced.append(f"`{g.name}` {ts.replicas} slices per GPU{shared}")
    return "; time-slicing: " + ", ".join(sliced) if sliced else ""


def _efa_section(preview: Preview) -> list[str]:
    """Per pool: EFA interfaces and fabric bandwidth; per multi-node workload: on EFA or not."""
    s = preview.settings
    distributed = [w for w in s.workloads if w.kind in ("distributed", "nccl-test")]
    if not s.gpu_node_groups and not distributed:
        return []
    out = ["", "## EFA fabric", ""]
    karpenter_path = s.autoscaler == "karpenter"
    rows = []
    for g in s.gpu_node_groups:
        fabric = g.efa_fabric
        capable = g.instance_type_info.efa is not None
        if fabric is None:
            wired = "-"
        elif karpenter_path:
            wired = (
                f"EC2NodeClass `networkInterfaces` (ENA + {fabric.network_cards} `efa-only`), "
                f"NodeOverlay `hugepages-2Mi: {g.efa.hugepages}`"
            )
        else:
            wired = "launch template (`efa` + `efa-only` interfaces)"
        where = (
            "-"
            if fabric is None
            else "`subnetIds`"
            if g.subnet_ids
            else f"private subnet {g.efa.subnet_index}"
        )
        rows.append(
            [
                g.name,
                ", ".join(g.instance_types),
                str(fabric.network_cards) if fabric else ("off" if capable else "-"),
                f"{fabric.fabric_gbps:,} Gbps" if fabric else "-",
                "yes" if fabric and fabric.gpudirect_rdma else "-",
                wired,
                where,
                ("placement group" if g.efa.placement_group else "no placement group")
                + (
                    f", reservation `{g.efa.capacity_reservation_id}`"
                    if g.efa.capacity_reservation_id
                    else ""
                )
                if fabric
                else "-",
            ]
        )
    if rows:
        out += _table(
            [
                "pool",
                "instance types",
                "EFA interfaces/node",
                "fabric",
                "GPUDirect RDMA",
                "interfaces in",
                "one zone",
                "placement",
            ],
            rows,
        )
    if distributed:
        rows = []
        for w in distributed:
            pod = s.efa_for(w)
            threshold = s.nccl_threshold(w) if isinstance(w, NcclTestSpec) else None
            rows.append(
                [
                    f"{w.team}/{w.name}",
                    w.kind,
                    str(w.pods),
                    f"yes ({pod.interfaces} interfaces, {pod.hugepages} huge pages)"
                    if pod
                    else "no (TCP sockets)",
                    f"{threshold:g} GB/s" if threshold is not None else "-",
                ]
            )
        out += [""]
        out += _table(["workload", "kind", "nodes", "on EFA", "fails below (busbw)"], rows)
    return out


def render(preview: Preview) -> str:
    s = preview.settings
    run = preview.run
    out: list[str] = [
        f"# Plan: stack `{preview.stack}`",
        "",
        f"- Environment: `{s.environment}`",
        f"- Cluster: `{s.cluster_name}` ({run.outputs.get('clusterMode', s.cluster.mode)}), "
        f"Kubernetes {s.cluster.kubernetes_version}"
        + (f", region {s.cluster.region}" if s.cluster.uses_aws else ""),
        f"- {len(run.records)} resources, {len(preview.manifests)} Kubernetes manifests, "
        f"{len(preview.findings)} policy findings "
        f"({len(preview.mandatory_findings)} mandatory)",
        "",
        "## Resources by type",
        "",
    ]
    counts = Counter(r.type for r in run.records)
    out += _table(["type", "count"], [[f"`{t}`", str(n)] for t, n in sorted(counts.items())])

    out += ["", "## GPU capacity", ""]
    rows: list[list[str]] = []
    for g in s.gpu_node_groups:
        info = g.instance_type_info
        advertised = advertised_gpus(g, s.device_plugin)
        per_node = str(g.gpus_per_node) + (
            f" ({advertised} advertised)" if advertised != g.gpus_per_node else ""
        )
        rows.append(
            [
                g.name,
                ", ".join(g.instance_types),
                f"{info.gpu_model} {info.gpu_memory_gib} GB",
                g.capacity_type,
                f"{g.min_size}-{g.max_size}",
                per_node,
                str(g.max_gpus),
            ]
        )
    for n in s.cluster.existing_gpu_nodes:
        rows.append(
            [
                n.name,
                "(existing nodes)",
                n.accelerator or "",
                "",
                f"{n.count}",
                str(n.gpus_per_node),
                str(n.count * n.gpus_per_node),
            ]
        )
    rows.append(["**total**", "", "", "", "", "", f"**{s.gpu_capacity}**"])
    out += _table(
        [
            "node group",
            "instance types",
            "GPU",
            "capacity",
            "nodes (min-max)",
            "GPUs/node",
            "max GPUs",
        ],
        rows,
    )
    out += _autoscaling(s)
    out += ["", "Capacity is physical GPUs at every group's maxSize" + _time_slicing(s) + "."]

    out += _efa_section(preview)

    out += ["", "## Team GPU quotas", ""]
    capacity = s.gpu_capacity
    rows = [
        [
            t.name,
            str(t.quota.gpus),
            _ratio(t.quota.gpus, capacity),
            str(s.max_gpus_per_container(t)),
            "yes" if t.quota.overcommit else "no",
        ]
        for t in s.teams
    ]
    total = sum(t.quota.gpus for t in s.teams)
    rows.append(["**total**", f"**{total}**", f"**{_ratio(total, capacity)}**", "", ""])
    out += _table(
        ["team", "GPU quota", "quota / capacity", "max GPUs per container", "overcommit"], rows
    )

    out += ["", "## Workloads", ""]
    if s.workloads:
        rows = []
        for w in s.workloads:
            gpu = w.gpu_resource.removeprefix("nvidia.com/") if w.gpus else "-"
            schedule = getattr(w, "schedule", None)
            rows.append(
                [
                    f"{w.team}/{w.name}",
                    w.kind + (f" ({schedule})" if schedule else ""),
                    w.priority_class,
                    str(w.pods),
                    f"{w.gpus} {gpu}" if w.gpus else "-",
                    str(w.pods * w.gpus),
                ]
            )
        out += _table(["workload", "kind", "priority class", "pods", "GPUs per pod", "GPUs"], rows)
        always_on = sum(w.pods * w.gpus for w in s.workloads if w.kind == "inference")
        out += [
            "",
            f"Always-on GPU demand (inference at minReplicas, canaries included): "
            f"{always_on} of {capacity} GPUs ({_ratio(always_on, capacity)}).",
        ]
    else:
        out.append("None.")

    out += _queueing(preview)

    releases = [r for r in run.records if r.type == "kubernetes:helm.sh/v3:Release"]
    if releases:
        out += ["", "## Helm releases", ""]
        out += _table(
            ["release", "chart", "version", "namespace"],
            [
                [
                    str(r.inputs.get("name", r.name)),
                    str(r.inputs.get("chart", "")),
                    str(r.inputs.get("version", "")),
                    str(r.inputs.get("namespace", "")),
                ]
                for r in releases
            ],
        )
        out += [
            "",
            "A Helm release is one resource here: its objects are not rendered or validated by "
            "the offline preview (`pulumi preview --diff` shows them).",
        ]

    out += ["", "## Policy findings", ""]
    if preview.findings:
        out += _table(
            ["level", "policy", "resource", "message"],
            [
                [f["level"], f"`{f['policy']}`", f"`{f['resource']}`", f["message"]]
                for f in preview.findings
            ],
        )
    else:
        out.append("None.")

    out += ["", "## Schema validation", ""]
    builtin = len(preview.manifests) - len(preview.unvalidated) - len(preview.crd_validated)
    out.append(
        f"{builtin} manifests validated strictly (unknown fields are errors) against "
        f"Kubernetes {s.cluster.kubernetes_version}; {len(preview.schema_problems)} failed."
    )
    for against in sorted(set(preview.crd_validated.values())):
        paths = sorted(p for p, a in preview.crd_validated.items() if a == against)
        note = (
            ""
            if "unknown fields are errors" in against
            else " (structure, types, enums and patterns; unknown fields and the CRDs' CEL "
            "rules (`x-kubernetes-validations`) are not checked by these models)"
        )
        out += ["", f"{len(paths)} custom resources validated against {against}{note}:", ""]
        out += [f"- `{path}`" for path in paths]
    for path, problems in sorted(preview.schema_problems.items()):
        for p in problems:
            out.append(f"- FAILED `{path}`: `{p.path}`: {p.message}")
    if preview.unvalidated:
        out += ["", "Not validated:", ""]
        out += [f"- `{path}`: {reason}" for path, reason in sorted(preview.unvalidated.items())]
    return "\n".join(out) + "\n"


def _limit(q: queue_sim.Quota | None) -> str:
    if q is None:
        return "-"
    return "unlimited" if q.borrowing is None else f"{q.borrowing:g}"


def _queueing(preview: Preview) -> list[str]:
    """Per team and pool: nominal, borrowing and lending GPUs; per queued job: its
    queue, flavor, whether it fits the team's nominal quota alone, and where it
    stands in the admission order (policies/queue_sim.py)."""
    s = preview.settings
    out = ["", "## Queueing", ""]
    if not s.queueing.enabled:
        return [*out, "Off: jobs are admitted by the team ResourceQuotas alone (no queue)."]
    if not s.queueing.active:
        return [*out, "Kueue installed (`installOnly`): no queues yet, jobs are not queued."]
    model = queue_sim.read(resources(preview.run))
    gpu = catalog.GPU_RESOURCE
    rows: list[list[str]] = []
    for cq in model.cluster_queues.values():
        for flavor in cq.flavors():
            q = cq.quotas.get((flavor, gpu))
            if q is None:
                continue
            rows.append(
                [
                    cq.name,
                    flavor,
                    f"{q.nominal:g}",
                    _limit(q),
                    "all" if q.lending is None else f"{q.lending:g}",
                ]
            )
    out += _table(["team", "pool (flavor)", "nominal GPUs", "borrowing limit", "lendable"], rows)
    pools = []
    for name, f in sorted(model.flavors.items()):
        if f.gpu_capacity is None:
            continue
        nominal = sum(
            (
                q.nominal
                for cq in model.cluster_queues.values()
                for (fl, r), q in cq.quotas.items()
                if fl == name and r == gpu
            ),
            start=queue_sim.Decimal(0),
        )
        pools.append([name, f"{f.gpu_capacity:g}", f"{nominal:g}", f"{f.gpu_capacity - nominal:g}"])
    out += ["", "Pools:", ""]
    out += _table(["pool", "GPUs", "nominal (queued)", "not in any queue"], pools)
    serving = sum(w.pods * w.gpus for w in s.workloads if w.kind == "inference")
    outside = sum((f.gpu_capacity for f in model.flavors.values() if f.gpu_capacity), start=0)
    outside -= sum(
        (
            q.nominal
            for cq in model.cluster_queues.values()
            for (_, r), q in cq.quotas.items()
            if r == gpu
        ),
        start=0,
    )
    warning = (
        f" **More than the {outside:g} GPUs outside the queues: admitted jobs and serving "
        "would compete for nodes.**"
        if serving > outside
        else ""
    )
    out += [
        "",
        f"Serving is not queued (it scales with its traffic): its {serving} GPUs at minReplicas "
        "come out of the GPUs not in any queue and out of the team ResourceQuotas, which Kueue "
        f"does not see.{warning} CPU and memory are queued too, as flavor `cpu`, at each team's "
        "ResourceQuota.",
        "",
        "Jobs in admission order (all pending at once: higher priority first, then by name):",
        "",
    ]
    rows = []
    for v in queue_sim.check(model):
        w = v.workload
        if v.never:
            status = f"**never**: {v.never}"
        elif v.admitted_at_once:
            status = "admitted at once"
        else:
            status = "waits for capacity"
        rows.append(
            [
                str(v.position),
                f"`{w.label}`",
                str(w.priority),
                f"{w.namespace}/{w.queue} -> {v.cluster_queue or '-'}",
                ", ".join(sorted(set(v.flavors.values()))) or "-",
                str(w.gpus),
                "-" if v.never else ("yes" if v.fits_nominal else "no (borrows)"),
                status,
            ]
        )
    out += _table(
        ["#", "job", "priority", "queue", "flavor", "GPUs", "fits nominal alone", "admission"],
        rows,
    )
    return out
