"""Platform: composes the cluster, GPU capacity (managed node groups with or
without the Cluster Autoscaler, or Karpenter NodePools), device plugin,
priority classes and team namespaces from one validated PlatformSettings."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from infra import catalog
from infra.cluster import Cluster, ClusterArgs
from infra.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs
from infra.device_plugin import NvidiaDevicePlugin, NvidiaDevicePluginArgs
from infra.efa import EfaDevicePlugin, EfaDevicePluginArgs
from infra.gpu_nodes import GpuNodeGroup, GpuNodeGroupArgs
from infra.karpenter import Karpenter, KarpenterArgs
from infra.queueing import METRICS_PORT_NAME, METRICS_SERVICE_LABELS, Queueing
from infra.scheduling import PriorityClasses
from infra.tenancy import TeamAccess, TeamAccessArgs, TeamNamespace, TeamNamespaceArgs
from mlplatform import queues
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
from workloads.queue_monitoring import QueueMonitoring, QueueMonitoringArgs
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

        self.karpenter: Karpenter | None = None
        self.cluster_autoscaler: ClusterAutoscaler | None = None
        if s.autoscaler == "karpenter":
            self.karpenter = self._karpenter(name, aws_opts)
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
            if s.autoscaler != "karpenter"
        ]
        if s.autoscaler == "cluster-autoscaler":
            self.cluster_autoscaler = self._cluster_autoscaler(name, aws_opts)
        self.device_plugin = (
            NvidiaDevicePlugin(
                f"{name}-device-plugin",
                NvidiaDevicePluginArgs(
                    settings=s.device_plugin,
                    pools={
                        g.name: g.effective_device_plugin(s.device_plugin)
                        for g in s.gpu_node_groups
                        if g.device_plugin is not None
                    },
                ),
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
                    metrics_ports=s.team_metrics_ports(team.name),
                    serving_ports=s.team_serving_ports(team.name),
                    cluster_cidrs=(s.cluster.vpc.cidr,) if s.cluster.mode == "create" else (),
                ),
                opts=k8s_opts,
            )
            for team in s.teams
        }
        self.queueing = (
            Queueing(
                f"{name}-queueing",
                queues.queueing_args(s, {n: [t.namespace_resource] for n, t in self.teams.items()}),
                opts=k8s_opts,
            )
            if s.queueing.enabled
            else None
        )
        principals: dict[str, list[str]] = {}
        for team in s.teams:
            for arn in team.iam_members:
                principals.setdefault(arn, []).append(team.name)
        self.team_access = (
            TeamAccess(
                f"{name}-team-access",
                TeamAccessArgs(
                    cluster_name=self.cluster.eks.name
                    if s.cluster.mode == "create"
                    else s.cluster_name,
                    partition=self.cluster.partition,
                    principals=principals,
                ),
                opts=aws_opts,
            )
            if principals
            else None
        )
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
                    InferenceTarget(
                        w.team,
                        w.name,
                        w.served_model_name,
                        w.latency_slo_ms / 1000,
                        runtime=w.runtime,
                        metrics_port=w.metrics_endpoint.port if w.metrics_endpoint else None,
                        metrics_path=w.metrics_endpoint.path if w.metrics_endpoint else None,
                        ttft_slo_seconds=w.vllm_settings.time_to_first_token_slo_ms / 1000,
                        itl_slo_seconds=w.vllm_settings.inter_token_latency_slo_ms / 1000,
                    )
                    for w in s.workloads
                    if isinstance(w, InferenceServiceSpec)
                ],
                hpa_metrics=s.hpa_metrics(),
                node_groups={g.name: g.max_size for g in s.gpu_node_groups},
            ),
            opts=k8s_opts,
        )
        self.queue_monitoring = (
            QueueMonitoring(
                f"{name}-queue-monitoring",
                QueueMonitoringArgs(
                    monitoring_namespace=s.monitoring.namespace,
                    kueue_namespace=s.queueing.namespace,
                    pending_minutes=s.queueing.pending_alert_minutes,
                    runbook_url=s.monitoring.runbook_url,
                    metrics_service_labels=METRICS_SERVICE_LABELS,
                    metrics_port=METRICS_PORT_NAME,
                    depends_on=[*self.monitoring.crd_dependencies, self.queueing.release],
                ),
                opts=k8s_opts,
            )
            if self.queueing is not None and s.queueing.active
            else None
        )
        self.register_outputs(self.stack_outputs())

    def _capacity_opts(self, aws_opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
        """Options of a capacity component: both the AWS and the Kubernetes provider."""
        providers = dict(aws_opts.providers or {})  # type: ignore[arg-type]
        providers["kubernetes"] = self.cluster.provider
        return pulumi.ResourceOptions(parent=self, providers=providers)

    def _system_node_selector(self) -> dict[str, str] | None:
        return (
            {catalog.NODE_ROLE_LABEL: "system"} if self.settings.cluster.mode == "create" else None
        )

    def _karpenter(self, name: str, aws_opts: pulumi.ResourceOptions) -> Karpenter:
        s = self.settings
        c = self.cluster
        assert s.cluster.region is not None  # validated: EKS needs a region
        assert c.oidc_provider_arn is not None and c.oidc_issuer_url is not None
        return Karpenter(
            f"{name}-karpenter",
            KarpenterArgs(
                settings=s.capacity.karpenter,
                groups=list(s.gpu_node_groups),
                cluster_name=c.eks.name if s.cluster.mode == "create" else s.cluster_name,
                cluster_name_plain=s.cluster_name,
                region=s.cluster.region,
                partition=c.partition,
                oidc_provider_arn=c.oidc_provider_arn,
                oidc_issuer_url=c.oidc_issuer_url,
                discovery_tag=s.capacity.karpenter.discovery_tag or s.cluster_name,
                node_selector=self._system_node_selector(),
                vpc_id=c.vpc_id,
                subnet_ids=c.node_subnet_ids,
            ),
            opts=self._capacity_opts(aws_opts),
        )

    def _cluster_autoscaler(self, name: str, aws_opts: pulumi.ResourceOptions) -> ClusterAutoscaler:
        s = self.settings
        c = self.cluster
        assert s.cluster.region is not None
        assert c.oidc_provider_arn is not None and c.oidc_issuer_url is not None
        return ClusterAutoscaler(
            f"{name}-cluster-autoscaler",
            ClusterAutoscalerArgs(
                settings=s.capacity.cluster_autoscaler,
                cluster_name=s.cluster_name,
                kubernetes_version=s.cluster.kubernetes_version,
                region=s.cluster.region,
                partition=c.partition,
                oidc_provider_arn=c.oidc_provider_arn,
                oidc_issuer_url=c.oidc_issuer_url,
                node_selector=self._system_node_selector(),
            ),
            opts=self._capacity_opts(aws_opts),
        )

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
            depends_on=(team, self.priority_classes, *self._queue_dependencies(spec.team)),
            queue_name=queues.queue_name(s, spec),
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

    def _queue_dependencies(self, team: str) -> list[pulumi.Resource]:
        """A queued job waits for its LocalQueue (and so for Kueue's webhooks)."""
        if self.queueing is None:
            return []
        lq = self.queueing.local_queue_resources.get(team)
        return [lq] if lq is not None else [self.queueing.release]

    def _node_groups_by_setting(self) -> list[GpuNodeGroup | None]:
        if self.karpenter is not None:
            return [None for _ in self.settings.gpu_node_groups]
        return list(self.gpu_node_groups)

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
                    # Under Karpenter: the NodePool's name.
                    "nodeGroupName": ng.node_group_name if ng is not None else g.name,
                    "instanceTypes": list(g.instance_types),
                    "capacityType": g.capacity_type,
                    "gpusPerNode": g.gpus_per_node,
                    "maxGpus": g.max_gpus,
                }
                for g, ng in zip(s.gpu_node_groups, self._node_groups_by_setting(), strict=True)
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
                    "runtime": w.runtime,
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
