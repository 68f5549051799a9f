"""Train a reference model, single process or DDP under torchrun, resumably.

    python -m mlruntime.train --model transformer --preset small --steps 1000 \\
        --checkpoint-dir /checkpoints --export-dir /output/model
    torchrun --nproc-per-node 8 -m mlruntime.train ...   # DDP: nccl on GPU, gloo on CPU

Preemption: SIGTERM (or SIGINT) only sets a flag. At the next step boundary
every rank agrees to stop (the flag rides on the per-step all-reduce of the
loss), rank 0 writes a checkpoint, all ranks meet at a barrier and exit with
contract.EXIT_PREEMPTED (143). The next start resumes from the newest valid
checkpoint with the same model, optimizer, LR schedule, RNG states and data
position, so the loss trajectory continues as if never interrupted.

stdout carries JSON lines only (`start`, `resumed`, `step`, `checkpoint`,
`exported`, `preempted`, `done`); diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch import nn

from . import checkpoint as ckpt
from .common import CliParser, UsageError, emit, run_cli
from .contract import EXIT_OK, EXIT_PREEMPTED, TRAIN_METRICS_PORT
from .data import TrainData, make_dataset
from .device import DEVICE_CHOICES, autocast, configure_cpu_threads, select_device
from .models import (
    PRESETS,
    ModelConfig,
    TransformerConfig,
    build_model,
    config_to_dict,
    count_parameters,
    export_model,
)
from .telemetry import Telemetry

log = logging.getLogger("mlruntime.train")

# Size flags that override a preset field, per model kind.
SIZE_FLAGS = {
    "transformer": ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "d_ff"),
    "mlp": ("in_features", "hidden", "depth", "classes"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = CliParser(prog="train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="transformer")
    parser.add_argument(
        "--preset",
        default="tiny",
        help="named size: transformer tiny|small|124m|1b, mlp tiny|mnist (default tiny)",
    )
    size = parser.add_argument_group("model size (override the preset)")
    for flag in sorted({f for fields in SIZE_FLAGS.values() for f in fields}):
        size.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int)
    parser.add_argument(
        "--data", default="synthetic", help="'synthetic' or a directory (see data.py)"
    )
    parser.add_argument("--synthetic-samples", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=100, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="0 disables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", type=Path, help="resume from and save to here")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="0: only at end/stop")
    parser.add_argument("--keep-checkpoints", type=int, default=3)
    parser.add_argument("--export-dir", type=Path, help="write the final model here")
    parser.add_argument(
        "--metrics-port", type=int, default=TRAIN_METRICS_PORT, help="Prometheus; 0 disables"
    )
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = CPU budget")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "log_every", "keep_checkpoints", "synthetic_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("checkpoint_every", "warmup_steps", "num_workers", "threads", "metrics_port"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.lr <= 0:
        parser.error("--lr must be > 0")
    if args.preset not in PRESETS[args.model]:
        parser.error(
            f"--preset {args.preset!r} is not a {args.model} preset; "
            f"choose from {', '.join(PRESETS[args.model])}"
        )
    foreign = [
        f"--{f.replace('_', '-')}"
        for kind, fields in SIZE_FLAGS.items()
        if kind != args.model
        for f in fields
        if getattr(args, f) is not None and f not in SIZE_FLAGS[args.model]
    ]
    if foreign:
        parser.error(f"{', '.join(foreign)} do not apply to --model {args.model}")
    return args


def model_config(args: argparse.Namespace) -> ModelConfig:
    base = PRESETS[args.model][args.preset]
    overrides = {f: getattr(args, f) for f in SIZE_FLAGS[args.model] if getattr(args, f)}
    if "d_model" in overrides and "d_ff" not in overrides:
        overrides["d_ff"] = 0  # re-derive 4 * d_model rather than keep the preset's
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as exc:
        raise UsageError(f"model size: {exc}") from None


@dataclass
class Dist:
    """Where this process sits in the job (torchrun sets the variables)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_name: str) -> Dist:
    try:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise UsageError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None
    device = select_device(device_name, local_rank)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank, world_size, local_rank, device)


class StopFlag:
    """Set by SIGTERM/SIGINT; read at step boundaries only (saving mid-step is unsafe)."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def make_optimizer(model: nn.Module, args: argparse.Namespace, device: torch.device) -> Any:
    """AdamW; no weight decay on biases and norms; fused kernel on CUDA."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, fused=device.type == "cuda")


def make_scheduler(optimizer: Any, warmup: int, total: int) -> Any:
    """Linear warmup, then cosine decay to 10% of --lr at the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], d: Dist) -> torch.Tensor:
    inputs, targets = (t.to(d.device, non_blocking=True) for t in batch)
    with autocast(d.device):
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Trainer:
    def __init__(self, args: argparse.Namespace, d: Dist) -> None:
        self.args, self.d = args, d
        self.config = model_config(args)
        if d.device.type == "cpu":
            configure_cpu_threads(args.threads or None)
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        self.model = build_model(self.config).to(d.device)
        self.optimizer = make_optimizer(self.model, args, d.device)
        self.scheduler = make_scheduler(self.optimizer, args.warmup_steps, args.steps)
        dataset = make_dataset(self.config, args.data, args.seed, args.synthetic_samples)
        self.data = TrainData(
            dataset,
            args.batch_size,
            rank=d.rank,
            world_size=d.world_size,
            seed=args.seed,
            num_workers=args.num_workers,
            pin_memory=d.device.type == "cuda",
        )
        self.step = self.epoch = self.consumed = 0
        self.mlflow_run_id: str | None = None
        self._resume()
        runner: nn.Module = self.model
        if d.enabled:
            runner = nn.parallel.DistributedDataParallel(
                runner, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )
        # torch.compile returns a callable wrapper of the same module.
        self.runner = cast(nn.Module, torch.compile(runner)) if args.compile else runner

    def _resume(self) -> None:
        if self.args.checkpoint_dir is None:
            return
        found = ckpt.load_latest(self.args.checkpoint_dir)
        if found is None:
            return
        state, path = found
        saved = state.get("model_kind"), state.get("model_config")
        if saved != (self.config.kind, config_to_dict(self.config)):
            raise UsageError(
                f"{path} holds a {saved[0]} with config {saved[1]}, but the arguments "
                f"ask for a {self.config.kind} with {config_to_dict(self.config)}; "
                "use the same model arguments or another --checkpoint-dir"
            )
        if state.get("world_size") != self.d.world_size:
            log.warning(
                "%s was written by %s ranks, now %d: the data order will differ from an "
                "uninterrupted run",
                path,
                state.get("world_size"),
                self.d.world_size,
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        ckpt.restore_rng(rngs[self.d.rank] if self.d.rank < len(rngs) else rngs[0])
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.mlflow_run_id = state.get("mlflow_run_id")
        if self.d.rank == 0:
            emit("resumed", step=self.step, epoch=self.epoch, path=str(path))

    def save(self, telemetry: Telemetry) -> None:
        """Collective: every rank contributes its RNG state; rank 0 writes."""
        if self.args.checkpoint_dir is None:
            return
        rng = ckpt.capture_rng()
        rngs: list[Any] = [rng]
        if self.d.enabled:
            rngs = [None] * self.d.world_size
            dist.all_gather_object(rngs, rng)
        if self.d.rank == 0:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "consumed": self.consumed,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rngs,
                "model_kind": self.config.kind,
                "model_config": config_to_dict(self.config),
                "world_size": self.d.world_size,
                "mlflow_run_id": telemetry.mlflow_run_id,
            }
            path = ckpt.save_checkpoint(self.args.checkpoint_dir, state, self.args.keep_checkpoints)
            telemetry.checkpoint(self.step, str(path))
        self.d.barrier()

    def run(self, stop: StopFlag) -> int:
        args, d = self.args, self.d
        samples_per_step = args.batch_size * d.world_size
        tokens_per_sample = self.config.seq_len if isinstance(self.config, TransformerConfig) else 1
        telemetry = Telemetry(
            rank=d.rank,
            local_rank=d.local_rank,
            metrics_port=args.metrics_port,
            mlflow_run_id=self.mlflow_run_id,
            run_name=f"{self.config.kind}-{args.preset}",
            params={
                k: v
                for k, v in {**vars(args), **config_to_dict(self.config)}.items()
                if v is not None
            },
        )
        if d.rank == 0:
            emit(
                "start",
                model=self.config.kind,
                config=config_to_dict(self.config),
                parameters=count_parameters(self.model),
                flops_per_token=(
                    self.config.flops_per_token()
                    if isinstance(self.config, TransformerConfig)
                    else None
                ),
                world_size=d.world_size,
                device=str(d.device),
                start_step=self.step,
                steps=args.steps,
            )
        status = "FINISHED"
        try:
            preempted = self._loop(stop, telemetry, samples_per_step, tokens_per_sample)
            if preempted:
                status = "KILLED"
                if d.rank == 0:
                    emit("preempted", step=self.step)
                return EXIT_PREEMPTED
            self._finish()
            return EXIT_OK
        finally:
            telemetry.close(status)
            if d.enabled:
                dist.destroy_process_group()

    def _loop(
        self, stop: StopFlag, telemetry: Telemetry, samples_per_step: int, tokens_per_sample: int
    ) -> bool:
        """Train to --steps; True when stopped early by a signal (after saving)."""
        args, d = self.args, self.d
        if self.step >= args.steps:
            return False
        self.runner.train()
        batches = self.data.batches(self.epoch, self.consumed)
        window_start, window_steps = time.perf_counter(), 0
        while self.step < args.steps:
            self.epoch, self.consumed, batch = next(batches)
            loss = loss_fn(self.runner, batch, d)
            loss.backward()
            if args.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_steps += 1
            stopping, loss_value = self._agree(loss, stop.requested)
            last = self.step == args.steps
            if last or stopping or self.step % args.log_every == 0:
                if loss_value is None:
                    loss_value = loss.item()
                elapsed = time.perf_counter() - window_start
                rate = samples_per_step * window_steps / elapsed if elapsed > 0 else 0.0
                extra: dict[str, Any] = {"lr": self.scheduler.get_last_lr()[0]}
                if tokens_per_sample > 1:
                    extra["tokens_per_s"] = round(rate * tokens_per_sample, 1)
                if d.device.type == "cuda":
                    extra["gpu_memory_bytes"] = torch.cuda.memory_allocated(d.device)
                    extra["gpu_max_memory_bytes"] = torch.cuda.max_memory_allocated(d.device)
                telemetry.step(self.step, loss_value, rate, **extra)
                window_start, window_steps = time.perf_counter(), 0
            every = args.checkpoint_every
            if last or stopping or (every and self.step % every == 0):
                self.save(telemetry)
                window_start, window_steps = time.perf_counter(), 0
            if stopping and not last:
                return True
        return False

    def _agree(self, loss: torch.Tensor, requested: bool) -> tuple[bool, float | None]:
        """Across ranks: stop if any rank was signalled; mean loss (one all-reduce).

        Ranks see SIGTERM at slightly different times; a rank that stopped on
        its own would leave the others blocked in the next gradient all-reduce.
        """
        if not self.d.enabled:
            return requested, None
        flags = torch.stack(
            [loss.detach().float(), torch.tensor(float(requested), device=self.d.device)]
        )
        dist.all_reduce(flags)
        total_loss, stops = flags.tolist()
        return stops > 0, total_loss / self.d.world_size

    def _finish(self) -> None:
        """Rank 0 exports and reports the parameter digest; the others wait for it."""
        if self.d.rank == 0:
            digest = ckpt.state_digest(self.model.state_dict())
            if self.args.export_dir is not None:
                export_model(
                    self.model,
                    self.config,
                    self.args.export_dir,
                    {"step": self.step, "param_sha256": digest, "created_by": "mlruntime.train"},
                )
                emit("exported", path=str(self.args.export_dir))
            emit("done", step=self.step, param_sha256=digest)
        self.d.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = StopFlag()  # before anything slow, so an early SIGTERM is not lost
    d = init_distributed(args.device)
    trainer = Trainer(args, d)
    return trainer.run(stop)


def exit_process(code: int, distributed: bool) -> NoReturn:
    """Leave with `code`; a distributed worker skips interpreter finalization.

    DistributedDataParallel keeps its process group alive after
    destroy_process_group() (with gloo, its `pt_gloo_runloop` and
    `gloo_tcp_loop` threads are still running when main() returns), so the
    backend would be torn down during interpreter finalization, where a
    C++ destructor can abort a finished job (SIGABRT, "terminate called
    without an active exception") and the pod then reports a failure. By
    now every checkpoint is fsynced, telemetry is closed and the process
    group destroyed: flush what is buffered and _exit.
    """
    if not distributed:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(run_cli("train", main, None), os.environ.get("WORLD_SIZE", "1").strip() != "1")
