"""Teams, node groups and the device plugins against the cluster: unique and
reserved names, quotas and limits against the nodes, IAM members, MIG and
time-slicing against the hardware, EFA subnets."""

from __future__ import annotations

from infra import catalog
from infra.config_types import Loc
from infra.tenancy import is_iam_principal
from mlplatform.stack import StackSettings


def problems(s: StackSettings) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    found += _unique([g.name for g in s.gpu_node_groups], "gpuNodeGroups")
    found += _unique([t.name for t in s.teams], "teams")
    reserved = {*catalog.SYSTEM_NAMESPACES, s.monitoring.namespace}
    for i, team in enumerate(s.teams):
        if team.name in reserved or team.name.startswith("kube-"):
            found.append(
                (
                    ("teams", i, "name"),
                    f"{team.name!r} is reserved for the platform",
                )
            )
    if s.gpu_node_groups and not s.cluster.uses_aws:
        found.append(
            (
                ("gpuNodeGroups",),
                "GPU node groups are EKS managed node groups; with "
                "cluster.kubeconfigContext describe the cluster's GPU nodes in "
                "cluster.existingGpuNodes instead",
            )
        )
    largest = s.largest_node_gpus
    capacity = s.gpu_capacity
    for i, team in enumerate(s.teams):
        if team.quota.gpus > capacity and not team.quota.overcommit:
            found.append(
                (
                    ("teams", i, "quota", "gpus"),
                    f"{team.quota.gpus} GPUs exceed what the node groups can ever "
                    f"provide ({capacity}); lower it or set quota.overcommit: true",
                )
            )
        limit = team.limits.max_gpus_per_container
        if limit is not None and limit > largest:
            found.append(
                (
                    ("teams", i, "limits", "maxGpusPerContainer"),
                    f"{limit} is more than the largest GPU node has ({largest})",
                )
            )
    for i, team in enumerate(s.teams):
        for j, member in enumerate(team.members):
            if not is_iam_principal(member):
                continue
            if not s.cluster.uses_aws:
                found.append(
                    (
                        ("teams", i, "members", j),
                        "IAM principals get access through EKS access entries; with "
                        "cluster.kubeconfigContext list Kubernetes group names instead",
                    )
                )
            elif member in s.cluster.admin_role_arns:
                found.append(
                    (
                        ("teams", i, "members", j),
                        "already a cluster admin (cluster.adminRoleArns): EKS allows one "
                        "access entry per principal",
                    )
                )
    dp = s.device_plugin
    if dp.sharing_enabled or dp.mig_strategy != "none":
        for i, group in enumerate(s.gpu_node_groups):
            if group.is_bottlerocket:
                found.append(
                    (
                        ("gpuNodeGroups", i, "amiType"),
                        "Bottlerocket runs its own device plugin, so "
                        "devicePlugin.timeSlicing/migStrategy would not apply to it; "
                        "use AL2023_x86_64_NVIDIA or turn sharing off",
                    )
                )
    if (
        dp.mig_strategy == "mixed"
        and s.gpu_node_groups
        and not any(p.mig_capable for p in s.gpu_pools)
    ):
        found.append(
            (
                ("devicePlugin", "migStrategy"),
                "'mixed' needs MIG-capable GPUs (A100, H100, H200) in some node group",
            )
        )
    # `mixed` advertises GPUs without MIG as nvidia.com/gpu, so MIG and plain
    # groups mix; `single` is meant for nodes whose GPUs are all MIG. (A
    # group's own devicePlugin is checked by the group.)
    for i, group in enumerate(s.gpu_node_groups):
        own = group.device_plugin
        if (
            dp.mig_strategy == "single"
            and (own is None or own.mig_strategy is None)
            and not group.instance_type_info.mig_capable
        ):
            found.append(
                (
                    ("gpuNodeGroups", i, "instanceTypes"),
                    f"{group.instance_type_info.gpu_model} GPUs do not support MIG "
                    "(devicePlugin.migStrategy is 'single'; use 'mixed' to run "
                    "MIG and plain GPU groups side by side)",
                )
            )
    for i, group in enumerate(s.gpu_node_groups):
        zones = s.cluster.vpc.availability_zones
        if (
            group.efa_fabric
            and not group.subnet_ids
            and s.cluster.mode == "create"
            and group.efa.subnet_index >= zones
        ):
            found.append(
                (
                    ("gpuNodeGroups", i, "efa", "subnetIndex"),
                    f"the cluster has {zones} private subnets (one per zone): use 0-{zones - 1}",
                )
            )
    return found


def _unique(names: list[str], key: str) -> list[tuple[Loc, str]]:
    seen: dict[str, int] = {}
    found: list[tuple[Loc, str]] = []
    for i, name in enumerate(names):
        if name in seen:
            found.append(((key, i, "name"), f"{name!r} is already used by {key}[{seen[name]}]"))
        else:
            seen[name] = i
    return found
