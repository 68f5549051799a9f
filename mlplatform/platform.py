"""Platform: composes the cluster, GPU node groups, device plugin, priority
classes and team namespaces from one validated PlatformSettings."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from infra.cluster import Cluster, ClusterArgs
from infra.device_plugin import NvidiaDevicePlugin, NvidiaDevicePluginArgs
from infra.efa import EfaDevicePlugin, EfaDevicePluginArgs
from infra.gpu_nodes import GpuNodeGroup, GpuNodeGroupArgs
from infra.scheduling import PriorityClasses
from infra.tenancy import TeamNamespace, TeamNamespaceArgs
from mlplatform.settings import PlatformSettings
from workloads.batch import BatchInference, BatchInferenceArgs, BatchInferenceSpec
from workloads.common import WorkloadContext
from workloads.distributed import (
    DistributedTraining,
    DistributedTrainingArgs,
    DistributedTrainingSpec,
)
from workloads.image import RuntimeImage, RuntimeImageArgs
from workloads.monitoring import InferenceTarget, Monitoring, MonitoringArgs
from workloads.nccl_test import NcclTest, NcclTestArgs, NcclTestSpec
from workloads.runtime import contract
from workloads.serving import InferenceService, InferenceServiceArgs, InferenceServiceSpec
from workloads.training import TrainingJob, TrainingJobArgs, TrainingJobSpec

Workload = TrainingJob | DistributedTraining | InferenceService | BatchInference | NcclTest


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
                    vpc_id=self.cluster.vpc_id,
                    cluster_security_group_id=self.cluster.cluster_security_group_id,
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
        self.efa_device_plugin = (
            EfaDevicePlugin(
                f"{name}-efa-device-plugin",
                EfaDevicePluginArgs(settings=s.efa_device_plugin, region=s.cluster.region),
                opts=k8s_opts,
            )
            if s.efa_node_groups
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
                    metrics_ports=(contract.SERVE_PORT, contract.TRAIN_METRICS_PORT),
                ),
                opts=k8s_opts,
            )
            for team in s.teams
        }
        self.runtime_image = (
            RuntimeImage(
                f"{name}-runtime-image", RuntimeImageArgs(settings=s.runtime_image), opts=aws_opts
            )
            if s.runtime_image.configured
            else None
        )
        self.workloads: dict[str, Workload] = {}
        for spec in s.workloads:
            self.workloads[f"{spec.team}/{spec.name}"] = self._workload(name, spec, k8s_opts)
        self.monitoring = Monitoring(
            f"{name}-monitoring",
            MonitoringArgs(
                settings=s.monitoring,
                environment=s.environment,
                team_namespaces=[t.name for t in s.teams],
                storage_class=s.cluster.storage_class,
                inference=[
                    InferenceTarget(w.team, w.name, w.served_model_name, w.latency_slo_ms / 1000)
                    for w in s.workloads
                    if isinstance(w, InferenceServiceSpec)
                ],
                node_groups={g.name: g.max_size for g in s.gpu_node_groups},
            ),
            opts=k8s_opts,
        )
        self.register_outputs(self.stack_outputs())

    def _workload(self, name: str, spec: object, opts: pulumi.ResourceOptions) -> Workload:
        s = self.settings
        assert isinstance(
            spec,
            (
                TrainingJobSpec,
                DistributedTrainingSpec,
                InferenceServiceSpec,
                BatchInferenceSpec,
                NcclTestSpec,
            ),
        )
        team = self.teams[spec.team]
        team_settings = s.team(spec.team)
        assert team_settings is not None  # validated
        ctx = WorkloadContext(
            environment=s.environment,
            namespace=team.namespace,
            runtime_image=self.runtime_image.ref if self.runtime_image else "",
            spot_priority_classes=tuple(s.scheduling.spot_priority_classes),
            storage_class=s.cluster.storage_class,
            shared_storage_class=s.cluster.shared_storage_class,
            gateway_namespace=s.serving.gateway_namespace,
            mlflow_tracking_uri=s.mlflow.tracking_uri,
            team_allows_https_egress=team_settings.network.allow_https_egress,
            team_allows_intra_namespace=team_settings.network.allow_intra_namespace,
            depends_on=(team, self.priority_classes),
        )
        resource_name = f"{name}-{spec.team}-{spec.name}"
        if isinstance(spec, TrainingJobSpec):
            return TrainingJob(resource_name, TrainingJobArgs(spec, ctx), opts=opts)
        if isinstance(spec, DistributedTrainingSpec):
            return DistributedTraining(
                resource_name, DistributedTrainingArgs(spec, ctx, efa=s.efa_for(spec)), opts=opts
            )
        if isinstance(spec, NcclTestSpec):
            return NcclTest(
                resource_name,
                NcclTestArgs(
                    spec, ctx, efa=s.efa_for(spec), min_bus_bandwidth=s.nccl_threshold(spec)
                ),
                opts=opts,
            )
        if isinstance(spec, InferenceServiceSpec):
            return InferenceService(resource_name, InferenceServiceArgs(spec, ctx), opts=opts)
        return BatchInference(resource_name, BatchInferenceArgs(spec, ctx), opts=opts)

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
            "runtimeImage": self.runtime_image.ref if self.runtime_image else None,
            "workloads": {
                key: {
                    "kind": spec.kind,
                    "team": spec.team,
                    "namespace": spec.team,
                    "name": spec.name,
                }
                for key, spec in ((f"{w.team}/{w.name}", w) for w in s.workloads)
            },
            "inferenceEndpoints": {
                key: {
                    "url": w.url,
                    "namespace": w.namespace,
                    "serviceName": w.service_name,
                    "model": w.model_name,
                    "protocol": w.protocol,
                }
                for key, w in self.workloads.items()
                if isinstance(w, InferenceService)
            },
            "monitoring": {
                "namespace": self.monitoring.namespace,
                "dashboards": self.monitoring.dashboards,
                "alertGroups": self.monitoring.alert_groups,
                "stack": self.monitoring.installed_stack,
            },
        }
