"""The GPU instance types the platform knows: one table, used for validation,
capacity planning, autoscaler node templates and the policy rules.

Pure Python (no pydantic, no pulumi): the policy pack imports it from its own
virtualenv. Figures are from the AWS EC2 accelerated-computing instance pages
(https://aws.amazon.com/ec2/instance-types/#Accelerated_Computing); GPU memory
is per GPU, host memory in GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

MIG_GPU_MODELS = frozenset({"A100", "H100", "H200"})

# GPU instance families outside the table on purpose: AMD GPUs (g4ad: Radeon
# Pro V520) need AMD's device plugin and ROCm images, and the platform runs
# NVIDIA only; Inferentia/Trainium (inf*, trn*) are not GPUs.
UNSUPPORTED_ACCELERATED_FAMILIES = {
    "g4ad": "AMD Radeon Pro V520 GPUs: the platform supports NVIDIA GPUs only",
    "inf1": "AWS Inferentia, not a GPU",
    "inf2": "AWS Inferentia2, not a GPU",
    "trn1": "AWS Trainium, not a GPU",
    "trn1n": "AWS Trainium, not a GPU",
    "trn2": "AWS Trainium2, not a GPU",
}


@dataclass(frozen=True)
class GpuInstanceType:
    name: str
    gpus: int
    gpu_model: str
    gpu_memory_gib: int  # per GPU
    vcpus: int
    memory_gib: int
    # Value of the `k8s.amazonaws.com/accelerator` node label: what the Cluster
    # Autoscaler keys GPU nodes on, and what workloads can pin a GPU model with.
    accelerator: str

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def total_gpu_memory_gib(self) -> int:
        return self.gpus * self.gpu_memory_gib

    @property
    def mig_capable(self) -> bool:
        """Multi-Instance GPU exists on A100, H100 and H200 only."""
        return self.gpu_model in MIG_GPU_MODELS


def _family(
    family: str,
    gpu_model: str,
    gpu_memory_gib: int,
    accelerator: str,
    sizes: dict[str, tuple[int, int, int]],
) -> dict[str, GpuInstanceType]:
    """sizes: size -> (gpus, vcpus, memory GiB)."""
    return {
        f"{family}.{size}": GpuInstanceType(
            name=f"{family}.{size}",
            gpus=gpus,
            gpu_model=gpu_model,
            gpu_memory_gib=gpu_memory_gib,
            vcpus=vcpus,
            memory_gib=mem,
            accelerator=accelerator,
        )
        for size, (gpus, vcpus, mem) in sizes.items()
    }


# g4dn/g5/g6/g6e share one size ladder shape: 1 GPU up to 16xlarge, then 4 and 8.
_G_SIZES = {
    "xlarge": (1, 4, 16),
    "2xlarge": (1, 8, 32),
    "4xlarge": (1, 16, 64),
    "8xlarge": (1, 32, 128),
    "16xlarge": (1, 64, 256),
    "12xlarge": (4, 48, 192),
    "24xlarge": (4, 96, 384),
    "48xlarge": (8, 192, 768),
}
# g6e doubles host memory per vCPU.
_G6E_SIZES = {size: (g, v, m * 2) for size, (g, v, m) in _G_SIZES.items()}

GPU_INSTANCE_TYPES: dict[str, GpuInstanceType] = {
    # V100: no MIG, no bf16; p3dn has 32 GB GPUs and 100 Gbit/s networking.
    **_family(
        "p3",
        "V100",
        16,
        "nvidia-tesla-v100",
        {"2xlarge": (1, 8, 61), "8xlarge": (4, 32, 244), "16xlarge": (8, 64, 488)},
    ),
    **_family("p3dn", "V100", 32, "nvidia-tesla-v100", {"24xlarge": (8, 96, 768)}),
    **_family(
        "g4dn",
        "T4",
        16,
        "nvidia-tesla-t4",
        {k: v for k, v in _G_SIZES.items() if k != "48xlarge"} | {"metal": (8, 96, 384)},
    ),
    **_family("g5", "A10G", 24, "nvidia-a10g", _G_SIZES),
    **_family("g6", "L4", 24, "nvidia-l4", _G_SIZES),
    **_family("g6e", "L40S", 48, "nvidia-l40s", _G6E_SIZES),
    **_family("p4d", "A100", 40, "nvidia-a100", {"24xlarge": (8, 96, 1152)}),
    **_family("p4de", "A100", 80, "nvidia-a100-80gb", {"24xlarge": (8, 96, 1152)}),
    **_family(
        "p5",
        "H100",
        80,
        "nvidia-h100",
        {"4xlarge": (1, 16, 256), "48xlarge": (8, 192, 2048)},
    ),
    **_family("p5e", "H200", 141, "nvidia-h200", {"48xlarge": (8, 192, 2048)}),
    **_family("p5en", "H200", 141, "nvidia-h200", {"48xlarge": (8, 192, 2048)}),
}

GPU_FAMILIES: tuple[str, ...] = tuple(sorted({t.family for t in GPU_INSTANCE_TYPES.values()}))


def lookup(instance_type: str) -> GpuInstanceType | None:
    return GPU_INSTANCE_TYPES.get(instance_type)


def max_gpus_per_instance(instance_types: list[str] | tuple[str, ...]) -> int:
    """GPUs of the largest known instance among `instance_types` (0 if none known)."""
    return max((t.gpus for n in instance_types if (t := lookup(n))), default=0)
