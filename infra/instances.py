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
class EfaFabric:
    """The Elastic Fabric Adapter layout of an instance type.

    network_cards: EFA interfaces a node gets (one per network card, which is
    also the `vpc.amazonaws.com/efa` count the EFA device plugin advertises);
    fabric_gbps: the instance's network bandwidth over those cards;
    gpudirect_rdma: the NICs read and write GPU memory directly
    (`FI_EFA_USE_DEVICE_RDMA=1`, p4d and later);
    busbw_gbs: reference NCCL all_reduce bus bandwidth (GB/s) of 2 nodes at a
    2 GiB message, what the fabric smoke test (workloads/nccl_test.py) compares
    against; busbw_source says where the figure comes from.
    """

    network_cards: int
    fabric_gbps: int
    gpudirect_rdma: bool
    busbw_gbs: float
    busbw_source: str


# Sources (looked up December 2026):
# - p5/p5e: AWS EC2 User Guide, "Maximize network bandwidth on Amazon EC2
#   instances with multiple network cards"
#   (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html):
#   "P5 and P5e instances support up to 32 network cards and can deliver up to
#   3,200 Gbps"; `vpc.amazonaws.com/efa: 32` on p5.48xlarge in
#   aws-samples/awsome-distributed-training micro-benchmarks/nccl-tests/kubernetes/nccl-tests.yaml.
# - p4d/p4de: 4 x 100 Gbps EFA (aws-samples/aws-efa-eks README: "GPUDirect RDMA
#   backed with 4x100 Gbps EFA"; EC2 network specifications: 400 Gbps).
# - p5en: 16 EFA devices (EFAv3), 3,200 Gbps (EC2 network specifications;
#   torchx named_resources_aws `aws_p5en_48xlarge` devices={EFA: 16}).
# - bus bandwidth: aws-samples/awsome-distributed-training
#   micro-benchmarks/nccl-tests/README.md, all_reduce_perf on 2x p4de.24xlarge
#   (78.33 GB/s at 2 GiB) and 2x p5.48xlarge (443.72 GB/s at 2 GiB; 437.79 GB/s
#   on EKS). No published figure for p4d, p5e or p5en: they get the figure of
#   the type with the same fabric.
# g5/g6/g6e large sizes also have EFA, but the platform runs them single-node,
# so they are not marked here (an `efa: true` on them is a configuration error).
_P4_BUSBW = "awsome-distributed-training nccl-tests README: 2x p4de.24xlarge, 2 GiB"
_P5_BUSBW = "awsome-distributed-training nccl-tests README: 2x p5.48xlarge, 2 GiB"
EFA_FABRICS: dict[str, EfaFabric] = {
    "p4d.24xlarge": EfaFabric(4, 400, True, 78.0, _P4_BUSBW),
    "p4de.24xlarge": EfaFabric(4, 400, True, 78.0, _P4_BUSBW),
    "p5.48xlarge": EfaFabric(32, 3200, True, 437.0, _P5_BUSBW),
    "p5e.48xlarge": EfaFabric(32, 3200, True, 437.0, _P5_BUSBW + " (p5 figure: same fabric)"),
    "p5en.48xlarge": EfaFabric(16, 3200, True, 437.0, _P5_BUSBW + " (p5 figure: same fabric)"),
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
    # The EFA fabric (infra/efa.py), None for types without EFA. See EFA_FABRICS.
    efa: EfaFabric | None = None

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def total_gpu_memory_gib(self) -> int:
        return self.gpus * self.gpu_memory_gib

    @property
    def efa_capable(self) -> bool:
        return self.efa is not None

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
            efa=EFA_FABRICS.get(f"{family}.{size}"),
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


def efa_fabric(instance_type: str) -> EfaFabric | None:
    """The EFA layout of a GPU instance type the platform runs EFA on (None otherwise)."""
    info = lookup(instance_type)
    return info.efa if info else None


def max_gpus_per_instance(instance_types: list[str] | tuple[str, ...]) -> int:
    """GPUs of the largest known instance among `instance_types` (0 if none known)."""
    return max((t.gpus for n in instance_types if (t := lookup(n))), default=0)
