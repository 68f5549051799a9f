"""Platform: composes the cluster, GPU node groups, device plugin, priority
classes and team namespaces from one validated PlatformSettings."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from infra.cluster import Cluster, ClusterArgs
from infra.device_plugin import NvidiaDevicePlugin, NvidiaDevicePluginArgs
from infra.gpu_nodes import GpuNodeGroup, GpuNodeGroupArgs
from infra.scheduling import PriorityClasses
from infra.settings import PlatformSettings
from infra.tenancy import TeamNamespace, TeamNamespaceArgs


class Platform(pulumi.ComponentResource):
    """The whole platform of one environment.

    Outputs: see `stack_outputs()`; every one is also registered here.
    """

    def __init__(
        self, name: str, settings: PlatformSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:platform:Platform", name, None, opts)
        self.settings = settings
        s = settings
        aws_opts = pulumi.ResourceOptions(parent=self)
        if s.cluster.uses_aws:
            self.aws_provider = aws.Provider(
                f"{name}-aws",
                region=s.cluster.region,
                default_tags={
                    "tags": {
                        "Project": "mlplatform",
                        "Environment": s.environment,
                        "ManagedBy": "pulumi",
                        **s.tags,
                    }
                },
                opts=pulumi.ResourceOptions(parent=self),
            )
            aws_opts = pulumi.ResourceOptions(parent=self, providers={"aws": self.aws_provider})

        self.cluster = Cluster(
            f"{name}-cluster",
            ClusterArgs(settings=s.cluster, cluster_name=s.cluster_name),
            opts=aws_opts,
        )
        k8s_opts = pulumi.ResourceOptions(
            parent=self, providers={"kubernetes": self.cluster.provider}
        )

        self.gpu_node_groups = [
            GpuNodeGroup(
                f"{name}-gpu-{group.name}",
                GpuNodeGroupArgs(
                    group=group,
                    device_plugin=s.device_plugin,
                    cluster_name=self.cluster.eks.name
                    if s.cluster.mode == "create"
                    else s.cluster_name,
                    cluster_name_plain=s.cluster_name,
                    kubernetes_version=s.cluster.kubernetes_version,
                    subnet_ids=group.subnet_ids or self.cluster.node_subnet_ids,
                    partition=self.cluster.partition,
                ),
                opts=aws_opts,
            )
            for group in s.gpu_node_groups
        ]
        self.device_plugin = (
            NvidiaDevicePlugin(
                f"{name}-device-plugin",
                NvidiaDevicePluginArgs(settings=s.device_plugin),
                opts=k8s_opts,
            )
            if s.device_plugin.enabled
            else None
        )
        self.priority_classes = PriorityClasses(f"{name}-priority-classes", opts=k8s_opts)
        self.teams = {
            team.name: TeamNamespace(
                f"{name}-team-{team.name}",
                TeamNamespaceArgs(
                    team=team,
                    kubernetes_version=s.cluster.kubernetes_version,
                    max_gpus_per_container=s.max_gpus_per_container(team),
                    monitoring_namespace=s.monitoring.namespace,
                ),
                opts=k8s_opts,
            )
            for team in s.teams
        }
        self.register_outputs(self.stack_outputs())

    def stack_outputs(self) -> dict[str, Any]:
        s = self.settings
        return {
            "environment": s.environment,
            "clusterName": s.cluster_name,
            "clusterMode": self.cluster.mode,
            "clusterEndpoint": self.cluster.endpoint,
            "kubeconfig": self.cluster.kubeconfig,
            "oidcProviderArn": self.cluster.oidc_provider_arn,
            "kubernetesVersion": s.cluster.kubernetes_version,
            "gpuNodeGroups": [
                {
                    "name": g.name,
                    "nodeGroupName": ng.node_group_name,
                    "instanceTypes": list(g.instance_types),
                    "capacityType": g.capacity_type,
                    "gpusPerNode": g.gpus_per_node,
                    "maxGpus": g.max_gpus,
                }
                for g, ng in zip(s.gpu_node_groups, self.gpu_node_groups, strict=True)
            ],
            "gpuCapacity": s.gpu_capacity,
            "teamNamespaces": {name: team.namespace for name, team in self.teams.items()},
            "priorityClasses": sorted(self.priority_classes.names),
        }
