"""Pulumi mocks for the offline preview and the tests.

The mocks stand in for the engine and the providers: every resource the
program registers is recorded with its parent, inputs and options, and the
outputs the program reads later (ARNs, the EKS endpoint and OIDC issuer, the
node group's Auto Scaling group name, invoke results) are supplied with
realistic values, so nothing the tests check stays unknown. Nothing in the
Pulumi program imports this module.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-west-2"

# Wire-format signatures (pulumi/sdk/python/lib/pulumi/runtime/rpc.py).
_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SECRET = "[secret]"
UNKNOWN = "[unknown]"


def _hash(*parts: str, n: int = 8) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def plain(value: Any) -> Any:
    """Wire values to plain JSON: integral floats become ints (mock quirk), secrets
    are masked, unknowns and resource references become readable markers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        sig = value.get(_SIG_KEY)
        if sig == _SECRET_SIG:
            return SECRET
        if sig == _RESOURCE_SIG:
            return value.get("urn", "")
        return {k: plain(v) for k, v in value.items()}
    if value == _UNKNOWN:
        return UNKNOWN
    return value


def urn_name(urn: str) -> str:
    """The resource name at the end of a URN."""
    return urn.rsplit("::", 1)[-1]


@dataclass
class Record:
    """One registered resource, as the engine would see it."""

    urn: str
    type: str
    name: str
    parent_urn: str
    custom: bool
    inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_kubernetes_object(self) -> bool:
        return (
            self.custom
            and self.type.startswith("kubernetes:")
            and "kind" in self.inputs
            and "apiVersion" in self.inputs
        )


class RecordingMonitor(MockMonitor):
    """A MockMonitor that also records parent, inputs and resource options."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.records: list[Record] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        inputs = plain(json_format.MessageToDict(request.object))
        options = {
            "protect": request.protect,
            "ignoreChanges": list(request.ignoreChanges),
            "replaceOnChanges": list(request.replaceOnChanges),
            "deleteBeforeReplace": request.deleteBeforeReplace,
            "retainOnDelete": request.retainOnDelete,
            "dependsOn": sorted(urn_name(u) for u in request.dependencies),
            "aliases": [json_format.MessageToDict(a) for a in request.aliases],
            # A provider reference is "<urn>::<id>".
            "provider": urn_name(request.provider.rsplit("::", 1)[0]) if request.provider else "",
        }
        record = Record(
            urn=response.urn,
            type=request.type,
            name=request.name,
            parent_urn=request.parent,
            custom=request.custom,
            inputs=inputs,
            options={k: v for k, v in options.items() if v},
        )
        with self._lock:
            self.records.append(record)
        return response


class PlatformMocks(pulumi.runtime.Mocks):
    """Outputs for the AWS resources and invokes the platform reads."""

    def __init__(self, region: str = DEFAULT_REGION, account_id: str = ACCOUNT_ID) -> None:
        self.region = region
        self.account_id = account_id
        self.subnet_zones: dict[str, str] = {}

    # -- resources --------------------------------------------------------------

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        handler = _RESOURCE_OUTPUTS.get(args.typ)
        resource_id = f"{args.name}-id"
        if handler is not None:
            resource_id, extra = handler(self, args)
            state.update(extra)
        return resource_id, state

    def arn(self, service: str, resource: str, region: bool = True) -> str:
        where = self.region if region else ""
        return f"arn:aws:{service}:{where}:{self.account_id}:{resource}"

    def physical_name(self, args: MockResourceArgs) -> str:
        """Pulumi auto-naming: the logical name plus a random suffix (here: stable)."""
        given = args.inputs.get("name")
        return given if isinstance(given, str) and given else f"{args.name}-{_hash(args.name, n=7)}"

    # -- invokes ----------------------------------------------------------------

    def call(self, args: MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
        handler = _CALLS.get(args.token)
        if handler is None:
            raise NotImplementedError(f"the offline preview's mocks do not implement {args.token}")
        return handler(self, args)

    def eks_cluster(self, name: str) -> dict[str, Any]:
        oidc_id = _hash(self.region, name, n=32).upper()
        return {
            "name": name,
            "arn": self.arn("eks", f"cluster/{name}"),
            "endpoint": f"https://{oidc_id}.gr7.{self.region}.eks.amazonaws.com",
            "identities": [
                {
                    "oidcs": [
                        {"issuer": f"https://oidc.eks.{self.region}.amazonaws.com/id/{oidc_id}"}
                    ]
                }
            ],
            "status": "ACTIVE",
        }


def _ca_data(name: str) -> str:
    return base64.b64encode(
        f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n".encode()
    ).decode()


ResourceHandler = Callable[[PlatformMocks, MockResourceArgs], tuple[str, dict[str, Any]]]


def _role(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = m.physical_name(a)
    return name, {
        "name": name,
        "arn": m.arn("iam", f"role/{name}", region=False),
        "uniqueId": _hash(name, n=21).upper(),
    }


def _eks_cluster(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = m.physical_name(a)
    vpc = dict(a.inputs.get("vpcConfig") or {})
    vpc.update(
        clusterSecurityGroupId=f"sg-{_hash(name, 'cluster', n=17)}",
        vpcId=f"vpc-{_hash('vpc', n=17)}",
    )
    state = m.eks_cluster(name)
    state.update(
        certificateAuthority={"data": _ca_data(name)}, vpcConfig=vpc, platformVersion="eks.1"
    )
    return name, state


def _node_group(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = a.inputs.get("nodeGroupName") or f"{a.name}-{_hash(a.name, n=7)}"
    cluster = a.inputs.get("clusterName", "cluster")
    # EKS names the ASG eks-<nodegroup>-<uuid>.
    asg = f"eks-{name}-{_hash(cluster, name, n=8)}-{_hash(name, n=4)}"
    return f"{cluster}:{name}", {
        "nodeGroupName": name,
        "arn": m.arn("eks", f"nodegroup/{cluster}/{name}/{_hash(name, n=8)}"),
        "status": "ACTIVE",
        "resources": [{"autoscalingGroups": [{"name": asg}], "remoteAccessSecurityGroupId": ""}],
    }


def _oidc_provider(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    host = str(a.inputs.get("url", "")).removeprefix("https://")
    arn = m.arn("iam", f"oidc-provider/{host}", region=False)
    return arn, {"arn": arn}


def _kms_key(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    parts = [_hash(a.name, str(i), n=n) for i, n in enumerate((8, 4, 4, 4, 12))]
    key_id = "-".join(parts)
    return key_id, {"keyId": key_id, "arn": m.arn("kms", f"key/{key_id}")}


def _with_id(prefix: str) -> ResourceHandler:
    def handler(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid = f"{prefix}-{_hash(a.name, n=17)}"
        return rid, {"arn": m.arn("ec2", f"{prefix}/{rid}")}

    return handler


def _subnet(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    rid, state = _with_id("subnet")(m, a)
    zone = a.inputs.get("availabilityZone")
    if isinstance(zone, str) and zone:
        m.subnet_zones[rid] = zone  # what aws.ec2.get_subnet answers for it
    return rid, state


def _launch_template(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    rid = f"lt-{_hash(a.name, n=17)}"
    prefix = a.inputs.get("namePrefix") or ""
    return rid, {
        "arn": m.arn("ec2", f"launch-template/{rid}"),
        "name": a.inputs.get("name") or f"{prefix}{_hash(a.name, n=26)}",
        "latestVersion": 1,
        "defaultVersion": 1,
    }


def _placement_group(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = m.physical_name(a)
    return name, {
        "name": name,
        "arn": m.arn("ec2", f"placement-group/{name}"),
        "placementGroupId": f"pg-{_hash(name, n=17)}",
    }


def _ecr_repository(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = m.physical_name(a)
    return name, {
        "name": name,
        "arn": m.arn("ecr", f"repository/{name}"),
        "registryId": m.account_id,
        "repositoryUrl": f"{m.account_id}.dkr.ecr.{m.region}.amazonaws.com/{name}",
    }


def _docker_image(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    # The digest a real build would report: stable for the same tags (source hash).
    digest = "sha256:" + hashlib.sha256(repr(a.inputs.get("tags")).encode()).hexdigest()
    tags = a.inputs.get("tags") or [""]
    return digest, {"digest": digest, "ref": f"{str(tags[0]).rsplit(':', 1)[0]}@{digest}"}


def _sqs_queue(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
    name = m.physical_name(a)
    url = f"https://sqs.{m.region}.amazonaws.com/{m.account_id}/{name}"
    return url, {"name": name, "url": url, "arn": m.arn("sqs", name)}


def _named_arn(service: str, kind: str, region: bool = True) -> ResourceHandler:
    def handler(m: PlatformMocks, a: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        name = m.physical_name(a)
        return name, {"name": name, "arn": m.arn(service, f"{kind}/{name}", region=region)}

    return handler


_RESOURCE_OUTPUTS: dict[str, ResourceHandler] = {
    "aws:ec2/launchTemplate:LaunchTemplate": _launch_template,
    "aws:sqs/queue:Queue": _sqs_queue,
    "aws:cloudwatch/eventRule:EventRule": _named_arn("events", "rule"),
    "aws:iam/policy:Policy": _named_arn("iam", "policy", region=False),
    "aws:iam/role:Role": _role,
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:eks/nodeGroup:NodeGroup": _node_group,
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": _oidc_provider,
    "aws:kms/key:Key": _kms_key,
    "aws:ec2/vpc:Vpc": _with_id("vpc"),
    "aws:ec2/subnet:Subnet": _subnet,
    "aws:ec2/internetGateway:InternetGateway": _with_id("igw"),
    "aws:ec2/natGateway:NatGateway": _with_id("nat"),
    "aws:ec2/eip:Eip": _with_id("eipalloc"),
    "aws:ec2/routeTable:RouteTable": _with_id("rtb"),
    "aws:ecr/repository:Repository": _ecr_repository,
    "aws:ec2/securityGroup:SecurityGroup": _with_id("sg"),
    "aws:ec2/placementGroup:PlacementGroup": _placement_group,
    "aws:efs/fileSystem:FileSystem": _with_id("fs"),
    "aws:efs/mountTarget:MountTarget": _with_id("fsmt"),
    "docker-build:index:Image": _docker_image,
}


CallHandler = Callable[[PlatformMocks, MockCallArgs], dict[str, Any]]


def _get_azs(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    names = [f"{m.region}{z}" for z in "abcd"]
    return {
        "id": m.region,
        "names": names,
        "zoneIds": [f"usw2-az{i + 1}" for i in range(len(names))],
    }


def _get_partition(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    return {
        "id": "aws",
        "partition": "aws",
        "dnsSuffix": "amazonaws.com",
        "reverseDnsPrefix": "com.amazonaws",
    }


def _get_caller_identity(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    return {
        "id": m.account_id,
        "accountId": m.account_id,
        "arn": f"arn:aws:iam::{m.account_id}:user/preview",
        "userId": "AIDAPREVIEW",
    }


def _get_eks_cluster(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    name = a.args.get("name", "cluster")
    state = m.eks_cluster(name)
    state.update(
        id=name,
        certificateAuthorities=[{"data": _ca_data(name)}],
        version="1.35",
        vpcConfig={
            "vpcId": f"vpc-{_hash('existing', name, n=17)}",
            "subnetIds": [f"subnet-{_hash('existing', name, str(i), n=17)}" for i in range(3)],
            "clusterSecurityGroupId": f"sg-{_hash(name, n=17)}",
            "endpointPrivateAccess": True,
            "endpointPublicAccess": False,
            "publicAccessCidrs": [],
            "securityGroupIds": [],
        },
    )
    return state


def _get_ecr_token(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    return {
        "id": m.region,
        "authorizationToken": "QVdTOm1vY2s=",
        "userName": "AWS",
        "password": "mock-ecr-password",
        "proxyEndpoint": f"https://{m.account_id}.dkr.ecr.{m.region}.amazonaws.com",
        "expiresAt": "2030-01-01T00:00:00Z",
    }


def _get_subnet(m: PlatformMocks, a: MockCallArgs) -> dict[str, Any]:
    """A subnet by id: the zone the stack created it in, or (a subnet the stack did
    not create, e.g. an existing cluster's) the region's first zone."""
    rid = str(a.args.get("id") or "")
    zone = m.subnet_zones.get(rid, f"{m.region}a")
    return {
        "id": rid,
        "availabilityZone": zone,
        "availabilityZoneId": f"usw2-az{'abcd'.index(zone[-1]) + 1}"
        if zone[-1] in "abcd"
        else "usw2-az1",
        "arn": m.arn("ec2", f"subnet/{rid}"),
    }


_CALLS: dict[str, CallHandler] = {
    "aws:ec2/getSubnet:getSubnet": _get_subnet,
    "aws:ecr/getAuthorizationToken:getAuthorizationToken": _get_ecr_token,
    "aws:index/getAvailabilityZones:getAvailabilityZones": _get_azs,
    "aws:index/getPartition:getPartition": _get_partition,
    "aws:index/getCallerIdentity:getCallerIdentity": _get_caller_identity,
    "aws:eks/getCluster:getCluster": _get_eks_cluster,
}
