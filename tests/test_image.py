"""RuntimeImage: built and pushed to ECR by the stack, or a prebuilt image by digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.config_types import ConfigError
from mlplatform.loading import load_settings
from tests.helpers import base_config, run
from workloads.image import RUNTIME_DIR, source_hash

TRAIN = {"kind": "training", "name": "ft", "team": "vision", "gpus": 1, "memory": "8Gi"}
DIGEST = "sha256:" + "b" * 64


def test_build_pushes_to_an_immutable_scanned_ecr_repository() -> None:
    r = run(base_config(runtimeImage={"build": {"repository": "ml/runtime"}}, workloads=[TRAIN]))
    repo = r.one("aws:ecr/repository:Repository", "mlplatform-runtime-image-repository")
    assert repo.inputs["name"] == "ml/runtime"
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repo.inputs["imageTagMutabilityExclusionFilters"] == [
        {"filter": "buildcache", "filterType": "WILDCARD"}
    ]
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS"}]
    image = r.one("docker-build:index:Image", "mlplatform-runtime-image-image")
    assert image.inputs["push"] is True
    assert image.inputs["platforms"] == ["linux/amd64"]
    # Relative to the project: the same inputs on every machine that runs `pulumi up`.
    assert image.inputs["context"]["location"] == "workloads/runtime"
    assert image.inputs["dockerfile"]["location"] == "workloads/runtime/Dockerfile"
    assert (RUNTIME_DIR / "Dockerfile").is_file()
    url = "123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/runtime"
    assert image.inputs["tags"] == [f"{url}:src-{source_hash()[:16]}"]
    assert image.inputs["registries"][0]["address"] == url
    assert image.inputs["registries"][0]["password"] == "[secret]"
    # Workloads run the image by digest, never by tag.
    job = r.manifest("Job", "ft", "vision")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith(f"{url}@sha256:")
    assert r.outputs["runtimeImage"].startswith(f"{url}@sha256:")


def test_prebuilt_image_by_digest_creates_nothing() -> None:
    ref = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/runtime@{DIGEST}"
    r = run(base_config(runtimeImage={"ref": ref}, workloads=[TRAIN]))
    assert not r.by_type("aws:ecr/repository:Repository")
    assert not r.by_type("docker-build:index:Image")
    assert (
        r.manifest("Job", "ft", "vision")["spec"]["template"]["spec"]["containers"][0]["image"]
        == ref
    )
    assert r.outputs["runtimeImage"] == ref


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ({"ref": "r.example/runtime:1.0.0"}, "pin the runtime image by digest"),
        ({"ref": f"r.example/runtime@{DIGEST}", "build": {}}, "either `ref` or `build`"),
    ],
)
def test_bad_runtime_image_settings(image: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(base_config(runtimeImage=image), "dev")
    assert any(
        path.startswith("mlplatform:runtimeImage") and words in msg
        for path, msg in info.value.problems
    )


def test_source_hash_follows_the_sources(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    before = source_hash(tmp_path)
    assert source_hash(tmp_path) == before and len(before) == 64
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert source_hash(tmp_path) == before  # caches do not change the image
    (tmp_path / "train.py").write_text("print(2)\n")
    assert source_hash(tmp_path) != before
