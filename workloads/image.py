"""RuntimeImage: the image the workloads run (workloads/runtime/), either built
and pushed to ECR by this stack (pulumi-docker-build) or a prebuilt image
referenced by digest (how prod promotes what staging built).

Built images are tagged `src-<hash of the runtime sources>` in an ECR
repository with immutable tags and scan-on-push, and workloads reference them
by digest, so a pod never runs anything but the exact image this stack built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build
from pydantic import Field, model_validator

from infra.config_types import FieldProblems, _Model
from workloads.common import ImageRef

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
# The build context as the program sees it: Pulumi runs programs from the project
# directory, and a relative path keeps the inputs the same on every checkout (an
# absolute one would show a change on each machine that runs `pulumi up`).
BUILD_CONTEXT = "workloads/runtime"
_IGNORED = {"__pycache__", ".pytest_cache"}


class RuntimeImageBuild(_Model):
    """Build the runtime image with the stack and push it to ECR."""

    repository: str = Field(
        "mlplatform/runtime",
        pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$",
        description="ECR repository name (created by the stack).",
    )
    platform: Literal["linux/amd64", "linux/arm64"] = Field(
        "linux/amd64", description="Target platform (GPU instances are x86_64)."
    )


class RuntimeImageSettings(_Model):
    """The runtime image: built by the stack, or a prebuilt one by digest."""

    ref: ImageRef | None = Field(
        None,
        description="Prebuilt image pinned by digest (`repo@sha256:...`), e.g. promoted from "
        "staging's `runtimeImage` output.",
    )
    build: RuntimeImageBuild | None = Field(None, description="Build and push it with the stack.")

    @model_validator(mode="after")
    def _one_way(self) -> RuntimeImageSettings:
        if self.ref is not None and self.build is not None:
            raise FieldProblems([((), "set either `ref` or `build`, not both")])
        if self.ref is not None and "@sha256:" not in self.ref:
            raise FieldProblems(
                [(("ref",), f"{self.ref!r}: pin the runtime image by digest (@sha256:...)")]
            )
        return self

    @property
    def configured(self) -> bool:
        return self.ref is not None or self.build is not None


def source_hash(directory: Path = RUNTIME_DIR) -> str:
    """Content hash of the image's build context (file names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not _IGNORED & set(path.parts) and path.suffix != ".pyc":
            digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class RuntimeImageArgs:
    settings: RuntimeImageSettings


class RuntimeImage(pulumi.ComponentResource):
    """Outputs: `ref` (image pinned by digest), `repository_url` (None when prebuilt)."""

    ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: RuntimeImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:RuntimeImage", name, None, opts)
        s = args.settings
        self.repository_url: pulumi.Output[str] | None = None
        if s.build is None:
            assert s.ref is not None
            self.ref = pulumi.Output.from_input(s.ref)
        else:
            child = pulumi.ResourceOptions(parent=self)
            repo = aws.ecr.Repository(
                f"{name}-repository",
                name=s.build.repository,
                # Release tags are immutable; only the build cache tag moves.
                image_tag_mutability="IMMUTABLE_WITH_EXCLUSION",
                image_tag_mutability_exclusion_filters=[
                    {"filter": "buildcache", "filter_type": "WILDCARD"}
                ],
                image_scanning_configuration={"scan_on_push": True},
                encryption_configurations=[{"encryption_type": "KMS"}],
                opts=child,
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-lifecycle",
                repository=repo.name,
                policy=(
                    '{"rules": [{"rulePriority": 1, "description": "keep the last 30 images",'
                    ' "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",'
                    ' "countNumber": 30}, "action": {"type": "expire"}}]}'
                ),
                opts=child,
            )
            token = aws.ecr.get_authorization_token_output(
                registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
            )
            tag = f"src-{source_hash()[:16]}"
            image = docker_build.Image(
                f"{name}-image",
                context={"location": BUILD_CONTEXT},
                dockerfile={"location": f"{BUILD_CONTEXT}/Dockerfile"},
                platforms=[s.build.platform],
                push=True,
                tags=[pulumi.Output.concat(repo.repository_url, ":", tag)],
                registries=[
                    {
                        "address": repo.repository_url,
                        "username": token.user_name,
                        # Secret whatever the provider marks: never in clear in the state.
                        "password": pulumi.Output.secret(token.password),
                    }
                ],
                cache_from=[
                    {"registry": {"ref": pulumi.Output.concat(repo.repository_url, ":buildcache")}}
                ],
                cache_to=[
                    {
                        "registry": {
                            "ref": pulumi.Output.concat(repo.repository_url, ":buildcache"),
                            "mode": "max",
                            "image_manifest": True,
                            "oci_media_types": True,
                        }
                    }
                ],
                opts=child,
            )
            self.repository_url = repo.repository_url
            self.ref = pulumi.Output.concat(repo.repository_url, "@", image.digest)
        self.register_outputs({"ref": self.ref, "repository_url": self.repository_url})
