"""What every node the stack creates shares: instance metadata locked to IMDSv2
with a hop limit of 1, and an encrypted gp3 root volume.

IMDSv2 with `httpPutResponseHopLimit: 1` keeps the instance metadata service
(and with it the node role's credentials) out of reach of pods on the pod
network: the PUT for a session token crosses one more hop from a pod and is
dropped. Pods get AWS access only through their service account (IRSA).
Host-network daemons (the VPC CNI) still reach it.

Managed node groups take these through a launch template (EKS merges its own
bootstrap into it as long as the template names no AMI), one per group: an EFA
group's interfaces and placement group go into the same template; Karpenter's
EC2NodeClass takes the same values in `metadataOptions` and
`blockDeviceMappings` (infra/karpenter.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_aws as aws

IMDS_HOP_LIMIT = 1

# The device EKS-optimized AMIs boot from; Bottlerocket keeps its OS there and
# puts images and containers on a second volume.
AL2023_ROOT_DEVICE = "/dev/xvda"
BOTTLEROCKET_OS_DEVICE = "/dev/xvda"
BOTTLEROCKET_DATA_DEVICE = "/dev/xvdb"
BOTTLEROCKET_OS_GIB = 4


def volumes(disk_size_gib: int, bottlerocket: bool) -> list[tuple[str, int]]:
    """(device, GiB) of a node's EBS volumes: the root volume, or Bottlerocket's
    small OS volume plus the data volume of `disk_size_gib`."""
    if bottlerocket:
        return [
            (BOTTLEROCKET_OS_DEVICE, BOTTLEROCKET_OS_GIB),
            (BOTTLEROCKET_DATA_DEVICE, disk_size_gib),
        ]
    return [(AL2023_ROOT_DEVICE, disk_size_gib)]


def launch_template(
    name: str,
    *,
    disk_size_gib: int,
    bottlerocket: bool = False,
    tags: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    parent: pulumi.Resource,
) -> aws.ec2.LaunchTemplate:
    """A launch template for an EKS managed node group: IMDSv2 only with hop
    limit 1, encrypted gp3 volumes, no AMI (EKS picks the group's AMI type).

    `extra`: more `aws.ec2.LaunchTemplate` arguments, such as an EFA group's
    network interfaces and placement (infra/efa.py `efa_launch_template_args()`).
    They may not replace what every node must have (metadata options, volumes).
    """
    more = dict(extra or {})
    clash = sorted(set(more) & _OWN_ARGS)
    if clash:
        raise ValueError(f"launch template {name}: {', '.join(clash)} are set by infra/nodes.py")
    block_devices: list[dict[str, Any]] = [
        {
            "device_name": device,
            "ebs": {
                "volume_size": size,
                "volume_type": "gp3",
                "encrypted": "true",
                "delete_on_termination": "true",
            },
        }
        for device, size in volumes(disk_size_gib, bottlerocket)
    ]
    return aws.ec2.LaunchTemplate(
        name,
        description="EKS managed nodes: IMDSv2 only (hop limit 1), encrypted gp3 volumes",
        metadata_options={
            "http_endpoint": "enabled",
            "http_tokens": "required",
            "http_put_response_hop_limit": IMDS_HOP_LIMIT,
            "instance_metadata_tags": "disabled",
        },
        block_device_mappings=block_devices,
        tag_specifications=[
            {"resource_type": kind, "tags": dict(tags or {})} for kind in ("instance", "volume")
        ]
        if tags
        else None,
        update_default_version=True,
        **more,
        opts=pulumi.ResourceOptions(parent=parent),
    )


# What `launch_template()` sets itself; `extra` may not override these.
_OWN_ARGS = frozenset(
    {
        "description",
        "metadata_options",
        "block_device_mappings",
        "tag_specifications",
        "update_default_version",
        "image_id",
        "opts",
    }
)
