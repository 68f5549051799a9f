"""plan.md: the human summary of an offline preview, for pull-request review."""

from __future__ import annotations

from collections import Counter

from infra.gpu_nodes import advertised_gpus
from tools.result import Preview
from workloads.nccl_test import NcclTestSpec


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else ("n/a" if part == 0 else "no capacity")


def _efa_section(preview: Preview) -> list[str]:
    """Per pool: EFA interfaces and fabric bandwidth; per multi-node workload: on EFA or not."""
    s = preview.settings
    distributed = [w for w in s.workloads if w.kind in ("distributed", "nccl-test")]
    if not s.gpu_node_groups and not distributed:
        return []
    out = ["", "## EFA fabric", ""]
    rows = []
    for g in s.gpu_node_groups:
        fabric = g.efa_fabric
        capable = g.instance_type_info.efa is not None
        rows.append(
            [
                g.name,
                ", ".join(g.instance_types),
                str(fabric.network_cards) if fabric else ("off" if capable else "-"),
                f"{fabric.fabric_gbps:,} Gbps" if fabric else "-",
                "yes" if fabric and fabric.gpudirect_rdma else "-",
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
                "node group",
                "instance types",
                "EFA interfaces/node",
                "fabric",
                "GPUDirect RDMA",
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
    out += [
        "",
        "Capacity is physical GPUs at every group's maxSize"
        + (
            f"; time-slicing advertises {s.device_plugin.time_slicing.replicas} slices per GPU."
            if s.device_plugin.sharing_enabled
            else "."
        ),
    ]

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
    if preview.crd_validated:
        against = sorted(set(preview.crd_validated.values()))
        out += [
            "",
            f"{len(preview.crd_validated)} custom resources validated against "
            f"{'; '.join(against)} (structure, types and enums; unknown fields are not "
            "checked by these models):",
            "",
        ]
        out += [f"- `{path}`" for path in sorted(preview.crd_validated)]
    for path, problems in sorted(preview.schema_problems.items()):
        for p in problems:
            out.append(f"- FAILED `{path}`: `{p.path}`: {p.message}")
    if preview.unvalidated:
        out += ["", "Not validated:", ""]
        out += [f"- `{path}`: {reason}" for path, reason in sorted(preview.unvalidated.items())]
    return "\n".join(out) + "\n"
