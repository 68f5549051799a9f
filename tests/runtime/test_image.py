"""The image recipe and pins: what the Pulumi components and the cluster rely on."""

from __future__ import annotations

import re
from pathlib import Path

from workloads.runtime import contract

RUNTIME = Path(__file__).resolve().parents[2] / "workloads" / "runtime"


def instructions() -> list[str]:
    text = (RUNTIME / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # fold continuation lines
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_base_image_is_the_official_pytorch_runtime_pinned_by_digest() -> None:
    (base,) = [line for line in instructions() if line.startswith("ARG BASE_IMAGE=")]
    assert re.fullmatch(
        r"ARG BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime@sha256:[0-9a-f]{64}",
        base,
    )
    assert "FROM ${BASE_IMAGE}" in instructions()


def test_image_runs_as_the_contract_user_with_caches_under_tmp() -> None:
    lines = instructions()
    assert f"USER {contract.RUN_AS_USER}:{contract.RUN_AS_GROUP}" in lines
    env = " ".join(line for line in lines if line.startswith("ENV "))
    for name, value in {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": contract.SCRATCH_DIR,
        "TORCH_HOME": f"{contract.SCRATCH_DIR}/torch",
        "XDG_CACHE_HOME": f"{contract.SCRATCH_DIR}/.cache",
        "TRITON_CACHE_DIR": f"{contract.SCRATCH_DIR}/triton",
    }.items():
        assert f"{name}={value}" in env, name
    assert f"/app/{contract.PACKAGE}" in " ".join(lines)
    assert f"EXPOSE {contract.SERVE_PORT} {contract.TRAIN_METRICS_PORT}" in lines


def test_requirements_are_exact_pins_and_leave_torch_to_the_base_image() -> None:
    def pins(name: str) -> list[str]:
        lines = (RUNTIME / name).read_text().splitlines()
        return [line for line in lines if line.strip() and not line.startswith(("#", "-r"))]

    image = pins("requirements.txt")
    assert image and all(re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[\w.]+", p) for p in image)
    assert not any(p.lower().startswith("torch") for p in image)
    test = pins("requirements-test.txt")
    assert "torch==2.13.0" in test
    assert all("==" in p for p in test)


def test_entrypoint_modules_exist() -> None:
    for module in (
        contract.TRAIN_MODULE,
        contract.SERVE_MODULE,
        contract.BATCH_MODULE,
        contract.FETCH_MODULE,
        contract.NCCL_TEST_MODULE,
    ):
        assert (RUNTIME / f"{module.split('.')[1]}.py").is_file(), module


def test_image_carries_libfabric_and_aws_ofi_nccl() -> None:
    """The EFA installer step (docs/efa.md): a pinned version, its signature
    checked, no kernel module, and the libraries on the loader path."""
    lines = instructions()
    (version,) = [line for line in lines if line.startswith("ARG EFA_INSTALLER_VERSION=")]
    assert re.fullmatch(r"ARG EFA_INSTALLER_VERSION=\d+\.\d+\.\d+", version)
    text = " ".join(lines)
    assert "gpg --batch --verify" in text
    assert "./efa_installer.sh -y -g -d --skip-kmod --skip-limit-conf --no-verify" in text
    assert "/opt/amazon/ofi-nccl/lib/x86_64-linux-gnu:/opt/amazon/efa/lib" in text
