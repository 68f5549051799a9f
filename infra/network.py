"""Network: the VPC of `create` mode.

Private subnets (nodes and pods) in each zone with a route to a NAT gateway,
small public subnets for the NAT gateways and internet-facing load balancers.
Subnets carry the tags the AWS Load Balancer Controller discovers them by; the
private subnets also carry `karpenter.sh/discovery: <cluster>`, by which
Karpenter's EC2NodeClasses find where to launch nodes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws
from pydantic import Field, field_validator

from infra.config_types import Cidr, _Model


class VpcSettings(_Model):
    """The VPC created in `create` mode."""

    cidr: Cidr = Field(
        "10.0.0.0/16",
        description="IPv4 CIDR of the VPC. A /16 leaves room for /19 private subnets "
        "(8,190 pod IPs each with the VPC CNI). Prefix length 16 to 20.",
    )
    availability_zones: int = Field(
        3,
        ge=2,
        le=6,
        description="Number of availability zones to spread subnets over (2 to 6; "
        "EKS requires subnets in at least 2).",
    )
    nat_gateways: Literal["single", "perAz"] = Field(
        "perAz",
        description="`perAz`: one NAT gateway per zone, so a zone outage does not cut "
        "egress for the others. `single`: one NAT gateway (cheaper; for dev).",
    )

    @field_validator("cidr")
    @classmethod
    def _check_prefix(cls, cidr: str) -> str:
        prefix = ipaddress.ip_network(cidr).prefixlen
        if not 16 <= prefix <= 20:
            raise ValueError(f"prefix length must be 16 to 20, got /{prefix}")
        return cidr


def allocate_subnets(vpc_cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Split the VPC into `zones` private and `zones` public subnets.

    The VPC is cut in eight: the first `zones` eighths are the private subnets
    (a /19 each in a /16: room for the VPC CNI's pod IPs); the last eighth is cut
    in eight again for the public subnets (a /22 each in a /16), which only hold
    NAT gateways and load balancers. The rest stays free for later use.
    """
    if not 1 <= zones <= 7:
        raise ValueError(f"zones must be 1 to 7, got {zones}")
    vpc = ipaddress.IPv4Network(vpc_cidr)
    eighths = list(vpc.subnets(prefixlen_diff=3))
    private = [str(n) for n in eighths[:zones]]
    public = [str(n) for n in list(eighths[-1].subnets(prefixlen_diff=3))[:zones]]
    return private, public


@dataclass(frozen=True)
class VpcArgs:
    settings: VpcSettings
    cluster_name: str


class Vpc(pulumi.ComponentResource):
    """VPC, subnets, internet and NAT gateways, route tables.

    Outputs: `vpc_id`, `private_subnet_ids`, `public_subnet_ids`.
    """

    def __init__(
        self, name: str, args: VpcArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:infra:Vpc", name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}
        zones = aws.get_availability_zones_output(
            state="available",
            filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )

        def zone(i: int) -> pulumi.Output[str]:
            def pick(names: list[str]) -> str:
                if len(names) <= i:
                    raise pulumi.RunError(
                        f"mlplatform:cluster.vpc.availabilityZones: the region has only "
                        f"{len(names)} zones, {s.availability_zones} asked for"
                    )
                return names[i]

            return zones.names.apply(pick)

        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=s.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": args.cluster_name},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw", vpc_id=self.vpc.id, tags={"Name": args.cluster_name}, opts=child
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags={"Name": f"{args.cluster_name}-public"},
            opts=child,
        )
        private_cidrs, public_cidrs = allocate_subnets(s.cidr, s.availability_zones)
        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        nats: list[aws.ec2.NatGateway] = []
        for i in range(s.availability_zones):
            public = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=self.vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone=zone(i),
                map_public_ip_on_launch=False,
                tags={
                    "Name": f"{args.cluster_name}-public-{i}",
                    "kubernetes.io/role/elb": "1",
                    **cluster_tag,
                },
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=public.id, route_table_id=public_rt.id, opts=child
            )
            public_subnets.append(public)
            if i == 0 or s.nat_gateways == "perAz":
                eip = aws.ec2.Eip(
                    f"{name}-nat-{i}",
                    domain="vpc",
                    tags={"Name": f"{args.cluster_name}-nat-{i}"},
                    opts=child,
                )
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.id,
                        subnet_id=public.id,
                        tags={"Name": f"{args.cluster_name}-nat-{i}"},
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                    )
                )
            private = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                cidr_block=private_cidrs[i],
                availability_zone=zone(i),
                tags={
                    "Name": f"{args.cluster_name}-private-{i}",
                    "kubernetes.io/role/internal-elb": "1",
                    "karpenter.sh/discovery": args.cluster_name,
                    **cluster_tag,
                },
                opts=child,
            )
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-{i}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nats[-1].id}],
                tags={"Name": f"{args.cluster_name}-private-{i}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}",
                subnet_id=private.id,
                route_table_id=private_rt.id,
                opts=child,
            )
            private_subnets.append(private)

        self.vpc_id = self.vpc.id
        self.private_subnet_ids = [sn.id for sn in private_subnets]
        self.public_subnet_ids = [sn.id for sn in public_subnets]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "private_subnet_ids": self.private_subnet_ids,
                "public_subnet_ids": self.public_subnet_ids,
            }
        )
