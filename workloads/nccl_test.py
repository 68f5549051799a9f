"""NcclTest: the fabric smoke test (kind `nccl-test`).

An all_reduce bandwidth test across `nodes` nodes of a GPU pool, run after
every `pulumi up` that touches a training pool: it fails when the bus
bandwidth at the largest message is below the threshold the instance table
gives for the pool's instance type (infra/instances.py `EfaFabric.busbw_gbs`
times `thresholdFraction`), or below `minBusBandwidth` when set.

How it runs: like distributed training (workloads/distributed.py), with no
operator: an Indexed Job of `nodes` pods, a headless Service for rank 0's
rendezvous, one zone, and torchrun starting `mlruntime.nccl_test` (the
runtime image: torch's NCCL with the image's aws-ofi-nccl and libfabric,
exactly the stack training uses) with one process per GPU. It measures what
NCCL's `all_reduce_perf` measures, with nccl-tests' bus bandwidth formula;
`all_reduce_perf` itself needs MPI (mpirun reaching every pod over ssh),
which the platform does not run. On an EFA pool the pods get the EFA
interfaces, huge pages and environment from infra/efa.py, like training.

Reading it: `kubectl logs job/<name>` on rank 0 prints one JSON line per
message size (`busbw_gbs`) and a `result` line; the Job fails (podFailurePolicy)
when any rank exits non-zero, which torchrun does when the bandwidth is under
the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field

from infra import efa, meta, pod, scheduling
from infra.config_types import PriorityClassName
from infra.efa import EfaPod
from workloads import common
from workloads.distributed import indexed_job_spec, rendezvous_service
from workloads.runtime import contract

CONTAINER = "nccl-test"


class NcclTestSpec(common.WorkloadSpec):
    """All_reduce bus bandwidth across the nodes of a GPU pool (kind `nccl-test`)."""

    runtime_program: ClassVar[str] = "nccl_test"

    kind: Literal["nccl-test"] = Field(description="`nccl-test`.")
    nodes: int = Field(2, ge=2, le=256, description="Nodes (pods) to test across, >= 2.")
    gpus: int = Field(ge=1, le=16, description="GPUs per node: one rank each (required).")
    efa: bool | None = Field(
        None,
        description="Test over the pool's EFA fabric. Default: on when every GPU pool the "
        "test may use has EFA (pin the pool with `accelerators`).",
    )
    min_bytes: str = Field(
        "8M", pattern=r"^[1-9][0-9]*[KMG]?$", description="Smallest message (`8M`)."
    )
    max_bytes: str = Field(
        "2G",
        pattern=r"^[1-9][0-9]*[KMG]?$",
        description="Largest message (`2G`): the threshold applies to its bus bandwidth "
        "(the instance table's reference figures are at 2 GiB).",
    )
    iterations: int = Field(20, ge=1, le=1000, description="Timed all_reduce calls per size.")
    min_bus_bandwidth: float | None = Field(
        None,
        gt=0,
        description="Fail below this bus bandwidth (GB/s). Default: the instance table's "
        "reference for the pool's type times `thresholdFraction` (EFA pools only; without "
        "EFA and without this value the test only reports).",
    )
    threshold_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Share of the reference bus bandwidth below which the test fails "
        "(0.8: more than 20% slower than the published 2-node figure).",
    )
    active_deadline_seconds: int = Field(
        3600, ge=60, description="The test's time limit (nodes scaling from zero included)."
    )
    ttl_seconds_after_finished: int = Field(
        86400, ge=0, description="Keep the finished Job (and its logs) this long."
    )
    priority_class: PriorityClassName = Field(
        "training-high", description="PriorityClass (it holds whole nodes briefly)."
    )

    @property
    def pods(self) -> int:
        return self.nodes


@dataclass(frozen=True)
class NcclTestArgs:
    spec: NcclTestSpec
    context: common.WorkloadContext
    efa: EfaPod | None = None
    # Bus bandwidth (GB/s) below which the test fails; None: report only.
    min_bus_bandwidth: float | None = None


def runtime_args(spec: NcclTestSpec, min_bus_bandwidth: float | None) -> list[str]:
    args = [
        f"--min-bytes={spec.min_bytes}",
        f"--max-bytes={spec.max_bytes}",
        f"--iters={spec.iterations}",
    ]
    if min_bus_bandwidth is not None:
        args.append(f"--min-busbw={min_bus_bandwidth:g}")
    return args


class NcclTest(pulumi.ComponentResource):
    """The fabric smoke test: an Indexed Job and its rendezvous Service.

    Outputs: `job_name`, `namespace`, `min_bus_bandwidth` (GB/s or None), `efa`.
    """

    def __init__(
        self, name: str, args: NcclTestArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlplatform:workloads:NcclTest", name, None, opts)
        spec, ctx = args.spec, args.context
        labels = common.workload_labels(spec, "nccl-test")
        sa = common.service_account(name, spec, ctx, labels, self)
        host = f"{spec.name}-0.{spec.name}"
        runtime = [
            "torchrun",
            f"--nnodes={spec.nodes}",
            f"--nproc-per-node={spec.gpus}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={host}:{contract.RENDEZVOUS_PORT}",
            f"--rdzv-id={spec.name}",
            "--max-restarts=0",
            "-m",
            contract.NCCL_TEST_MODULE,
        ]
        command, cargs = common.entrypoint(
            spec, runtime, runtime_args(spec, args.min_bus_bandwidth)
        )
        container = efa.apply(
            args.efa,
            pod.Container(
                name=CONTAINER,
                image=common.image_of(spec, ctx),  # type: ignore[arg-type]
                command=command,
                args=cargs,
                env=common.container_env(spec, {"NCCL_DEBUG": "INFO"}),
                ports={"rendezvous": contract.RENDEZVOUS_PORT},
                resources=common.resources(spec),
            ),
        )
        template = common.pod_spec(
            spec,
            ctx,
            labels,
            [container],
            subdomain=spec.name,
            shm_size=spec.shm_size,
            restart_policy="Never",
            pod_affinity=scheduling.same_zone_affinity(meta.selector(labels)),
            annotations=efa.pod_annotations(args.efa),
        )
        self.service = rendezvous_service(name, spec.name, labels, ctx, self)
        job_spec = indexed_job_spec(
            spec.nodes,
            0,  # a measurement: a failure is the answer, not something to retry
            spec.active_deadline_seconds,
            spec.ttl_seconds_after_finished,
            CONTAINER,
            template,
            ctx,
        )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=common.object_metadata(spec, ctx, labels),
            spec=job_spec,
            opts=ctx.opts(self, sa, delete_before_replace=True),
        )
        common.open_network("distributed", name, spec, ctx, labels, self)
        self.job_name = spec.name
        self.namespace = ctx.namespace
        self.min_bus_bandwidth = args.min_bus_bandwidth
        self.efa = args.efa is not None
        self.register_outputs(
            {
                "job_name": self.job_name,
                "namespace": self.namespace,
                "min_bus_bandwidth": self.min_bus_bandwidth,
                "efa": self.efa,
            }
        )
