"""IAM building blocks shared by the cluster and the node groups."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

# AWS-managed policies every EKS worker node needs. ECR pull-only (not the older
# read-only policy): nodes never need to list or describe repositories.
WORKER_NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryPullOnly",
)


def managed_policy_arn(partition: pulumi.Input[str], policy: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", policy)


def service_trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def irsa_trust_policy(
    oidc_provider_arn: pulumi.Input[str],
    oidc_issuer_url: pulumi.Input[str],
    namespace: str,
    service_account: str,
) -> pulumi.Output[str]:
    """Trust policy letting exactly one Kubernetes service account assume a role (IRSA)."""

    def render(args: list[Any]) -> str:
        arn, issuer = args
        host = issuer.removeprefix("https://")
        subject = f"system:serviceaccount:{namespace}:{service_account}"
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Federated": arn},
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        "Condition": {
                            "StringEquals": {
                                f"{host}:sub": subject,
                                f"{host}:aud": "sts.amazonaws.com",
                            }
                        },
                    }
                ],
            }
        )

    return pulumi.Output.all(oidc_provider_arn, oidc_issuer_url).apply(render)


def role_with_policies(
    name: str,
    *,
    assume_role_policy: pulumi.Input[str],
    policies: Sequence[str],
    partition: pulumi.Input[str],
    description: str,
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """An IAM role with AWS-managed policies attached (children `<name>-<policy>`)."""
    opts = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        name, assume_role_policy=assume_role_policy, description=description, opts=opts
    )
    for policy in policies:
        aws.iam.RolePolicyAttachment(
            f"{name}-{policy}",
            role=role.name,
            policy_arn=managed_policy_arn(partition, policy),
            opts=opts,
        )
    return role


def node_role(name: str, partition: pulumi.Input[str], parent: pulumi.Resource) -> aws.iam.Role:
    """The instance role of an EKS managed node group."""
    return role_with_policies(
        name,
        assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
        policies=WORKER_NODE_POLICIES,
        partition=partition,
        description="EKS worker nodes (mlplatform)",
        parent=parent,
    )
