"""Cluster: a new EKS cluster (`create`) or an existing one (`existing`), and the
Kubernetes provider every Kubernetes resource of the platform goes through.

`create` builds, with pulumi-aws directly (the pulumi-eks components are
opaque to the offline preview):
- a VPC with private subnets in >= 2 zones behind NAT (`infra.network`);
- the EKS control plane: private endpoint, public endpoint only for the CIDRs
  in config, EKS access entries (authentication mode API, no aws-auth
  ConfigMap), control-plane logs, Secrets envelope-encrypted with KMS;
- the OIDC provider for IAM roles for service accounts (IRSA);
- a small system node group for CPU add-ons;
- add-ons: the VPC CNI with NetworkPolicy enforcement on (IRSA role), before
  any node or workload, so team isolation is enforced, not just declared; the
  EBS CSI driver (IRSA role) with an encrypted gp3 default StorageClass for
  checkpoint PVCs, and the node monitoring agent, which feeds the GPU node
  groups' automatic repair;
- every node it makes requires IMDSv2 with hop limit 1 (infra/nodes.py);
- the `karpenter.sh/discovery` tag on the cluster security group (and, in
  infra/network.py, on the private subnets) by which Karpenter finds where to
  launch nodes.

`existing` looks an EKS cluster up by name (GPU node groups are still created in
it) or, with `kubeconfigContext`, uses any cluster and creates no AWS resource.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pydantic import Field, field_validator, model_validator

from infra import catalog, iam, meta, nodes, pod
from infra.config_types import Cidr, DnsLabel, FieldProblems, Loc, _Model, check_scaling
from infra.network import Vpc, VpcArgs, VpcSettings

SUPPORTED_KUBERNETES_VERSIONS = ("1.33", "1.34", "1.35", "1.36", "1.37")


class SystemNodeGroupSettings(_Model):
    """The small CPU node group for cluster add-ons and CPU pods (`create` mode)."""

    instance_types: list[str] = Field(
        ["m7i.xlarge"],
        min_length=1,
        description="Instance types (4 vCPU / 16 GiB holds CoreDNS, the EBS CSI "
        "controller and a monitoring stack).",
    )
    min_size: int = Field(
        2, ge=1, description="Minimum nodes (>= 1; 2 keeps CoreDNS highly available)."
    )
    desired_size: int | None = Field(None, description="Initial nodes. Default: `minSize`.")
    max_size: int = Field(4, ge=1, description="Maximum nodes.")
    disk_size_gib: int = Field(
        50, alias="diskSizeGiB", ge=20, le=16384, description="Root volume size in GiB."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> SystemNodeGroupSettings:
        check_scaling(self.min_size, self.desired_size, self.max_size)
        return self


class ExistingGpuNodesSettings(_Model):
    """GPU nodes that already exist in the cluster (not created by this stack).
    Used for capacity planning and quota checks."""

    name: DnsLabel = Field(description="A name for this pool (used in the plan).")
    count: int = Field(ge=0, description="Maximum number of such nodes.")
    gpus_per_node: int = Field(ge=1, le=16, description="GPUs per node.")
    accelerator: str | None = Field(
        None,
        description="Value of the nodes' `k8s.amazonaws.com/accelerator` label, if any.",
    )


class ClusterSettings(_Model):
    """Which cluster the platform runs on."""

    mode: Literal["create", "existing"] = Field(
        "create",
        description="`create`: a new VPC and EKS cluster. `existing`: an EKS cluster "
        "found by `name`, or any cluster by `kubeconfigContext`.",
    )
    name: DnsLabel | None = Field(
        None,
        description="EKS cluster name. Default in `create` mode: `mlplatform-<environment>`. "
        "Required in `existing` mode unless `kubeconfigContext` is set.",
    )
    kubeconfig_context: str | None = Field(
        None,
        description="`existing` mode only: use this context of the default kubeconfig "
        "($KUBECONFIG or ~/.kube/config) and create no AWS resources at all (on-prem, kind). "
        "Cannot be combined with `gpuNodeGroups`.",
    )
    region: str | None = Field(
        None,
        description="AWS region. Default: the `aws:region` config value. Required "
        "whenever AWS resources are created.",
    )
    kubernetes_version: str = Field(
        "1.35",
        description=f"Kubernetes minor version ({', '.join(SUPPORTED_KUBERNETES_VERSIONS)}). "
        "Manifests are schema-validated against it; in `existing` mode give the "
        "cluster's version.",
    )
    endpoint_public_access_cidrs: list[Cidr] = Field(
        [],
        description="CIDRs allowed to reach the public API endpoint. Empty (default): "
        "the endpoint is private to the VPC. `0.0.0.0/0` is rejected.",
    )
    admin_role_arns: list[str] = Field(
        [],
        description="IAM role ARNs granted cluster-admin through EKS access entries "
        "(the identity running `pulumi up` is admin already).",
    )
    control_plane_logs: list[
        Literal["api", "audit", "authenticator", "controllerManager", "scheduler"]
    ] = Field(
        ["api", "audit", "authenticator"],
        description="Control-plane log types sent to CloudWatch.",
    )
    secrets_encryption: bool = Field(
        True,
        description="Envelope-encrypt Kubernetes Secrets with a customer-managed KMS key "
        "(rotation on).",
    )
    deletion_protection: bool = Field(
        True,
        description="EKS deletion protection (`create` mode): the cluster cannot be "
        "deleted until this is turned off. Turn it off for throwaway dev clusters.",
    )
    storage_class: str = Field(
        "gp3",
        description="StorageClass for checkpoint and model PVCs. `create` mode installs "
        "the EBS CSI driver and an encrypted `gp3` class; in `existing` mode name one "
        "the cluster has.",
    )
    shared_storage_class: str | None = Field(
        None,
        description="ReadWriteMany StorageClass for checkpoints shared by the nodes of a "
        "distributed run. In `create` mode, setting it creates an encrypted EFS file "
        "system, the EFS CSI driver and a class of this name; in `existing` mode name one "
        "the cluster has. Unset: multi-node training needs an existing RWX claim.",
    )
    vpc: VpcSettings = Field(default_factory=VpcSettings, description="VPC (`create` mode).")
    system_nodes: SystemNodeGroupSettings = Field(
        default_factory=SystemNodeGroupSettings,
        description="System node group (`create` mode).",
    )
    subnet_ids: list[str] = Field(
        [],
        description="`existing` EKS mode: subnets for the GPU node groups. Default: the "
        "cluster's own subnets.",
    )
    existing_gpu_nodes: list[ExistingGpuNodesSettings] = Field(
        [],
        description="GPU nodes the cluster already has, counted as capacity.",
    )
    network_policy_enforced: bool | None = Field(
        None,
        description="`existing` mode: whether the cluster enforces NetworkPolicies (the "
        "VPC CNI with `enableNetworkPolicy`, Calico, Cilium...). Default `false`: the API "
        "server accepts NetworkPolicies that nothing enforces, and declaring team isolation "
        "on such a cluster is a mandatory policy finding (`network-policy-enforced`). "
        "`create` mode always enforces them (the stack manages the `vpc-cni` add-on).",
    )

    @field_validator("kubernetes_version", mode="before")
    @classmethod
    def _check_version(cls, version: Any) -> str:
        # YAML reads 1.30 as a float; accept it but compare as text.
        text = str(version)
        if text not in SUPPORTED_KUBERNETES_VERSIONS:
            raise ValueError(
                f"{text!r} is not supported; use one of {', '.join(SUPPORTED_KUBERNETES_VERSIONS)}"
            )
        return text

    @field_validator("endpoint_public_access_cidrs")
    @classmethod
    def _check_public_cidrs(cls, cidrs: list[str]) -> list[str]:
        problems: list[tuple[Loc, str]] = [
            (
                (i,),
                f"{cidr} opens the API endpoint to the whole internet; list the CIDRs "
                "of your offices, VPN or CI runners",
            )
            for i, cidr in enumerate(cidrs)
            if ipaddress.ip_network(cidr).prefixlen == 0
        ]
        if problems:
            raise FieldProblems(problems)
        return cidrs

    @model_validator(mode="after")
    def _check(self) -> ClusterSettings:
        problems: list[tuple[Loc, str]] = []
        if self.kubeconfig_context and self.mode != "existing":
            problems.append((("kubeconfigContext",), "only valid with mode: existing"))
        if self.mode == "existing" and not self.kubeconfig_context and not self.name:
            problems.append(
                (
                    ("name",),
                    "mode: existing needs the EKS cluster name (or kubeconfigContext)",
                )
            )
        if self.subnet_ids and self.mode != "existing":
            problems.append(
                (
                    ("subnetIds",),
                    "only valid with mode: existing (create mode makes its own subnets)",
                )
            )
        if self.network_policy_enforced is not None and self.mode != "existing":
            problems.append(
                (
                    ("networkPolicyEnforced",),
                    "only valid with mode: existing (create mode always enforces "
                    "NetworkPolicies through the vpc-cni add-on)",
                )
            )
        if self.uses_aws and not self.region:
            problems.append(
                (
                    ("region",),
                    "required (or set `aws:region`) when AWS resources are managed",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return self

    @property
    def uses_aws(self) -> bool:
        return not (self.mode == "existing" and self.kubeconfig_context)

    @property
    def enforces_network_policies(self) -> bool:
        return self.mode == "create" or bool(self.network_policy_enforced)


EBS_CSI_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
VPC_CNI_SERVICE_ACCOUNT = "aws-node"
# The tag Karpenter's EC2NodeClasses select subnets and security groups by.
KARPENTER_DISCOVERY_TAG = "karpenter.sh/discovery"
EFS_CSI_SERVICE_ACCOUNT = "efs-csi-controller-sa"


# The vpc-cni add-on's configuration schema (`aws eks describe-addon-configuration
# --addon-name vpc-cni`) takes `enableNetworkPolicy` as the string "true"; it
# starts the network policy agent in aws-node (VPC CNI >= 1.14; the add-on
# versions EKS picks for the supported Kubernetes versions are well past it).
VPC_CNI_CONFIGURATION = json.dumps({"enableNetworkPolicy": "true"})


def kubeconfig(
    cluster_name: pulumi.Input[str],
    endpoint: pulumi.Input[str],
    certificate_authority: pulumi.Input[str],
    region: str,
) -> pulumi.Output[str]:
    """A kubeconfig that authenticates with `aws eks get-token` (AWS CLI v2), so it
    holds no credentials and follows AWS_PROFILE of whoever runs Pulumi."""

    def render(args: list[Any]) -> str:
        name, server, ca = args
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}
                ],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
                "current-context": name,
                "users": [
                    {
                        "name": name,
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1beta1",
                                "command": "aws",
                                "args": [
                                    "--region",
                                    region,
                                    "eks",
                                    "get-token",
                                    "--cluster-name",
                                    name,
                                    "--output",
                                    "json",
                                ],
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
            },
            indent=2,
        )

    return pulumi.Output.secret(
        pulumi.Output.all(cluster_name, endpoint, certificate_authority).apply(render)
    )


@dataclass(frozen=True)
class ClusterArgs:
    settings: ClusterSettings
    cluster_name: str  # resolved name (settings.cluster_name)


class Cluster(pulumi.ComponentResource):
    """The cluster and the `k8s.Provider` for it.

    Outputs: `cluster_name`, `endpoint` (None with a kubeconfig context),
    `kubeconfig` (secret; None with a kubeconfig context), `oidc_provider_arn`,
    `oidc_issuer_url`, `node_subnet_ids`, `vpc_id`, `storage_class`, `mode`.
    """

    provider: k8s.Provider
    partition: pulumi.Output[str] | str

    def __init__(
        self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:Cluster", name, None, opts)
        s = args.settings
        self.cluster_name = args.cluster_name
        self.storage_class = s.storage_class
        self.mode = "kubeconfig" if not s.uses_aws else s.mode
        self.endpoint: pulumi.Output[str] | None = None
        self.kubeconfig: pulumi.Output[str] | None = None
        self.oidc_provider_arn: pulumi.Output[str] | None = None
        self.oidc_issuer_url: pulumi.Output[str] | None = None
        self.node_subnet_ids: pulumi.Input[list[str]] = []
        self.vpc_id: pulumi.Output[str] | None = None
        # The EKS-created security group every node joins (EFA launch templates
        # name their interfaces' groups, so they must list it).
        self.cluster_security_group_id: pulumi.Output[str] | None = None
        self.partition = "aws"
        if self.mode == "create":
            self._create(name, s)
        elif self.mode == "existing":
            self._existing_eks(name, s)
        else:
            self.provider = k8s.Provider(
                f"{name}-k8s",
                context=s.kubeconfig_context,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "endpoint": self.endpoint,
                "kubeconfig": self.kubeconfig,
                "oidc_provider_arn": self.oidc_provider_arn,
                "oidc_issuer_url": self.oidc_issuer_url,
                "node_subnet_ids": self.node_subnet_ids,
                "vpc_id": self.vpc_id,
                "storage_class": self.storage_class,
                "mode": self.mode,
            }
        )

    # -- create ---------------------------------------------------------------

    def _create(self, name: str, s: ClusterSettings) -> None:
        child = pulumi.ResourceOptions(parent=self)
        region = s.region
        assert region is not None  # validated: create mode needs a region
        self.partition = aws.get_partition_output(
            opts=pulumi.InvokeOutputOptions(parent=self)
        ).partition
        vpc = Vpc(
            f"{name}-network", VpcArgs(settings=s.vpc, cluster_name=self.cluster_name), opts=child
        )
        self.vpc_id = vpc.vpc_id
        self.node_subnet_ids = pulumi.Output.all(*vpc.private_subnet_ids)

        cluster_role = iam.role_with_policies(
            f"{name}-cluster-role",
            assume_role_policy=iam.service_trust_policy("eks.amazonaws.com"),
            policies=["AmazonEKSClusterPolicy"],
            partition=self.partition,
            description=f"EKS control plane of {self.cluster_name}",
            parent=self,
        )
        encryption = None
        if s.secrets_encryption:
            key = aws.kms.Key(
                f"{name}-secrets-key",
                description=f"Envelope encryption of Kubernetes Secrets in {self.cluster_name}",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                opts=child,
            )
            encryption = {"resources": ["secrets"], "provider": {"key_arn": key.arn}}
        self.eks = aws.eks.Cluster(
            f"{name}-eks",
            name=self.cluster_name,
            version=s.kubernetes_version,
            role_arn=cluster_role.arn,
            vpc_config={
                "subnet_ids": vpc.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": bool(s.endpoint_public_access_cidrs),
                "public_access_cidrs": s.endpoint_public_access_cidrs or None,
            },
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            enabled_cluster_log_types=list(s.control_plane_logs),
            encryption_config=encryption,
            deletion_protection=s.deletion_protection,
            opts=child,
        )
        self.endpoint = self.eks.endpoint
        self.cluster_security_group_id = self.eks.vpc_config.cluster_security_group_id
        self.oidc_issuer_url = self.eks.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=self.oidc_issuer_url,
            client_id_lists=["sts.amazonaws.com"],
            opts=child,
        )
        self.oidc_provider_arn = oidc.arn
        self.kubeconfig = kubeconfig(
            self.eks.name,
            self.eks.endpoint,
            self.eks.certificate_authority.apply(lambda ca: ca.data),
            region,
        )

        for i, principal in enumerate(s.admin_role_arns):
            entry = aws.eks.AccessEntry(
                f"{name}-admin-{i}", cluster_name=self.eks.name, principal_arn=principal, opts=child
            )
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{i}",
                cluster_name=self.eks.name,
                principal_arn=principal,
                policy_arn=pulumi.Output.concat(
                    "arn:",
                    self.partition,
                    ":eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                ),
                access_scope={"type": "cluster"},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )

        # Network policy enforcement before any node joins: the VPC CNI add-on
        # (a DaemonSet, so it needs no node to become active) with its network
        # policy agent on. The nodes' role keeps AmazonEKS_CNI_Policy so a node
        # can network its pods before the add-on's own role is in place.
        self.vpc_cni = self._addon(
            f"{name}-vpc-cni",
            "vpc-cni",
            child,
            irsa=(VPC_CNI_SERVICE_ACCOUNT, "AmazonEKS_CNI_Policy", oidc.arn),
            configuration_values=VPC_CNI_CONFIGURATION,
        )
        # Karpenter launches nodes into the cluster security group, found by tag
        # (EKS creates that group, so the tag is a resource of its own).
        aws.ec2.Tag(
            f"{name}-cluster-sg-discovery",
            resource_id=self.eks.vpc_config.cluster_security_group_id,
            key=KARPENTER_DISCOVERY_TAG,
            value=self.cluster_name,
            opts=child,
        )

        sysng = s.system_nodes
        system_role = iam.node_role(f"{name}-system-role", self.partition, parent=self)
        system_template = nodes.launch_template(
            f"{name}-system-lt",
            disk_size_gib=sysng.disk_size_gib,
            tags={"Name": f"{self.cluster_name}-system"},
            parent=self,
        )
        system_nodes = aws.eks.NodeGroup(
            f"{name}-system-nodes",
            cluster_name=self.eks.name,
            node_role_arn=system_role.arn,
            subnet_ids=vpc.private_subnet_ids,
            version=s.kubernetes_version,
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=list(sysng.instance_types),
            launch_template={
                "id": system_template.id,
                "version": system_template.latest_version.apply(str),
            },
            scaling_config={
                "min_size": sysng.min_size,
                "desired_size": sysng.desired_size
                if sysng.desired_size is not None
                else sysng.min_size,
                "max_size": sysng.max_size,
            },
            update_config={"max_unavailable": 1},
            labels={catalog.NODE_ROLE_LABEL: "system"},
            tags={"Name": f"{self.cluster_name}-system"},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[system_role, self.vpc_cni],
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        addon_opts = pulumi.ResourceOptions(parent=self, depends_on=[system_nodes])
        # Add-on versions: EKS picks the default version for the cluster's
        # Kubernetes version, which moves with it on upgrades.
        ebs = self._addon(
            f"{name}-ebs-csi",
            "aws-ebs-csi-driver",
            addon_opts,
            irsa=(EBS_CSI_SERVICE_ACCOUNT, "service-role/AmazonEBSCSIDriverPolicy", oidc.arn),
        )
        # HorizontalPodAutoscalers need the resource metrics API.
        self._addon(f"{name}-metrics-server", "metrics-server", addon_opts)
        # Feeds the GPU node groups' automatic repair (XID errors, failed GPUs).
        self._addon(f"{name}-node-monitoring", "eks-node-monitoring-agent", addon_opts)
        # Every Kubernetes object goes through this provider, so all of them wait
        # for the system nodes and for network policy enforcement.
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[system_nodes, self.vpc_cni]),
        )
        k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata=meta.metadata(
                s.storage_class,
                meta.labels("storage-class", s.storage_class, "storage"),
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
            ),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            # Bind where the pod lands: EBS volumes live in one zone.
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[ebs]),
        )
        if s.shared_storage_class:
            self._shared_filesystem(name, s, vpc, oidc.arn, addon_opts)

    def _shared_filesystem(
        self,
        name: str,
        s: ClusterSettings,
        vpc: Vpc,
        oidc_arn: pulumi.Input[str],
        addon_opts: pulumi.ResourceOptions,
    ) -> None:
        """EFS for ReadWriteMany checkpoints: encrypted, a mount target per zone,
        NFS open to the VPC only, the EFS CSI driver with an IRSA role, and a
        StorageClass whose access points belong to the runtime's user."""
        assert s.shared_storage_class is not None
        child = pulumi.ResourceOptions(parent=self)
        nfs = aws.ec2.SecurityGroup(
            f"{name}-efs",
            vpc_id=vpc.vpc_id,
            description=f"NFS from the {self.cluster_name} VPC to its EFS mount targets",
            ingress=[
                {"protocol": "tcp", "from_port": 2049, "to_port": 2049, "cidr_blocks": [s.vpc.cidr]}
            ],
            tags={"Name": f"{self.cluster_name}-efs"},
            opts=child,
        )
        fs = aws.efs.FileSystem(
            f"{name}-efs",
            encrypted=True,
            performance_mode="generalPurpose",
            throughput_mode="elastic",
            tags={"Name": f"{self.cluster_name}-checkpoints"},
            opts=child,
        )
        for i, subnet in enumerate(vpc.private_subnet_ids):
            aws.efs.MountTarget(
                f"{name}-efs-{i}",
                file_system_id=fs.id,
                subnet_id=subnet,
                security_groups=[nfs.id],
                opts=child,
            )
        driver = self._addon(
            f"{name}-efs-csi",
            "aws-efs-csi-driver",
            addon_opts,
            irsa=(EFS_CSI_SERVICE_ACCOUNT, "service-role/AmazonEFSCSIDriverPolicy", oidc_arn),
        )
        k8s.storage.v1.StorageClass(
            f"{name}-shared",
            metadata=meta.metadata(
                s.shared_storage_class,
                meta.labels("storage-class", s.shared_storage_class, "storage"),
            ),
            provisioner="efs.csi.aws.com",
            parameters={
                "provisioningMode": "efs-ap",
                "fileSystemId": fs.id,
                "directoryPerms": "700",
                # Access points owned by the user restricted pods run as.
                "uid": str(pod.NON_ROOT_UID),
                "gid": str(pod.NON_ROOT_GID),
                "basePath": "/checkpoints",
            },
            reclaim_policy="Delete",
            volume_binding_mode="Immediate",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[driver]),
        )

    def _addon(
        self,
        name: str,
        addon: str,
        opts: pulumi.ResourceOptions,
        irsa: tuple[str, str, pulumi.Input[str]] | None = None,
        configuration_values: str | None = None,
    ) -> aws.eks.Addon:
        """An EKS add-on; with `irsa` = (service account in kube-system, AWS managed
        policy, OIDC provider ARN) it gets its own IAM role (`<name>-role`)."""
        role_arn = None
        if irsa is not None:
            service_account, policy, oidc_arn = irsa
            assert self.oidc_issuer_url is not None
            role_arn = iam.role_with_policies(
                f"{name}-role",
                assume_role_policy=iam.irsa_trust_policy(
                    oidc_arn, self.oidc_issuer_url, "kube-system", service_account
                ),
                policies=[policy],
                partition=self.partition,
                description=f"{addon} of {self.cluster_name}",
                parent=self,
            ).arn
        return aws.eks.Addon(
            name,
            cluster_name=self.eks.name,
            addon_name=addon,
            service_account_role_arn=role_arn,
            configuration_values=configuration_values,
            # EKS clusters come with a self-managed VPC CNI: adopt it.
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            opts=opts,
        )

    # -- existing EKS -----------------------------------------------------------

    def _existing_eks(self, name: str, s: ClusterSettings) -> None:
        region = s.region
        assert region is not None
        invoke = pulumi.InvokeOutputOptions(parent=self)
        found = aws.eks.get_cluster_output(name=self.cluster_name, opts=invoke)
        self.partition = aws.get_partition_output(opts=invoke).partition
        account = aws.get_caller_identity_output(opts=invoke).account_id
        self.endpoint = found.endpoint
        self.vpc_id = found.vpc_config.vpc_id
        self.cluster_security_group_id = found.vpc_config.cluster_security_group_id
        self.node_subnet_ids = s.subnet_ids or found.vpc_config.subnet_ids
        self.oidc_issuer_url = found.identities.apply(lambda ids: ids[0].oidcs[0].issuer)
        # IRSA needs the cluster's OIDC provider to exist in IAM already
        # (`eksctl utils associate-iam-oidc-provider` or the module that made it).
        self.oidc_provider_arn = pulumi.Output.concat(
            "arn:",
            self.partition,
            ":iam::",
            account,
            ":oidc-provider/",
            self.oidc_issuer_url.apply(lambda url: url.removeprefix("https://")),
        )
        self.kubeconfig = kubeconfig(
            self.cluster_name,
            found.endpoint,
            found.certificate_authorities.apply(lambda cas: cas[0].data),
            region,
        )
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=self.kubeconfig, opts=pulumi.ResourceOptions(parent=self)
        )
