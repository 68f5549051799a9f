"""train.py for real on CPU: exact resume, crash-safe checkpoints, DDP, metrics, exports."""

from __future__ import annotations

import json
import random
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from workloads.runtime import checkpoint as ckpt
from workloads.runtime.contract import EXIT_PREEMPTED, EXIT_USAGE, TRAIN_METRICS
from workloads.runtime.models import load_model

from .conftest import Running, events, free_port, run_module, runtime_env, start, train_cmd

LM = ("--model", "transformer", "--batch-size", "8", "--synthetic-samples", "256")


def losses(stdout: str) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(stdout, "step")}


def test_sigterm_then_resume_continues_the_exact_trajectory(
    tmp_path: Path, background: list[Running]
) -> None:
    steps = "60"
    common = (*LM, "--steps", steps, "--log-every", "1", "--checkpoint-every", "1000")
    full = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *common,
        "--checkpoint-dir",
        str(tmp_path / "a"),
    )
    assert full.returncode == 0, full.stderr
    expected = losses(full.stdout)
    assert sorted(expected) == list(range(1, 61))
    assert expected[60] < expected[1]  # it learns

    port = free_port()
    run = start(
        train_cmd(*common, "--checkpoint-dir", str(tmp_path / "b"), "--metrics-port", str(port))
    )
    background.append(run)
    run.wait_for(lambda e: e["event"] == "step" and e["step"] >= 5)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    run.signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == EXIT_PREEMPTED
    (preempted,) = events(out, "preempted")
    stopped = preempted["step"]
    assert 5 <= stopped < 60, "SIGTERM must stop the run early"
    assert [c["step"] for c in events(out, "checkpoint")] == [stopped]
    for name, kind in TRAIN_METRICS.items():
        assert f"# TYPE {name} {kind}\n" in metrics, name
    step_value = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("mltrain_step "))
    )
    assert step_value >= 5

    resumed = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *common,
        "--checkpoint-dir",
        str(tmp_path / "b"),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert events(resumed.stdout, "resumed")[0]["step"] == stopped
    combined = {**losses(out), **losses(resumed.stdout)}
    assert combined == expected  # bit-exact, step by step
    assert (
        events(resumed.stdout, "done")[0]["param_sha256"]
        == events(full.stdout, "done")[0]["param_sha256"]
    )


def test_sigkill_during_saves_never_leaves_a_corrupt_newest_checkpoint(
    tmp_path: Path, background: list[Running]
) -> None:
    # ~4.2M parameters: each save writes ~50 MB, so most of the run is spent
    # saving and a kill at a random moment usually lands inside torch.save.
    args = (
        "--model",
        "mlp",
        "--hidden",
        "2048",
        "--steps",
        "100000",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--log-every",
        "1000",
        "--checkpoint-dir",
        str(tmp_path),
    )
    rng = random.Random(0)
    newest_steps = []
    for _ in range(3):
        run = start(train_cmd(*args))
        background.append(run)
        run.wait_for(lambda e: e["event"] == "checkpoint")
        time.sleep(rng.uniform(0.05, 0.4))
        run.signal(signal.SIGKILL)
        run.proc.wait(30)
        found = ckpt.load_latest(tmp_path)
        assert found is not None
        state, path = found
        assert path == ckpt.list_checkpoints(tmp_path)[0][1], "the newest must load"
        newest_steps.append(state["step"])
    assert newest_steps == sorted(newest_steps) and newest_steps[-1] > newest_steps[0]
    # A resumed run starts from the newest checkpoint and leaves no temp files behind.
    done = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *[a if a != "100000" else str(newest_steps[-1] + 2) for a in args],
    )
    assert done.returncode == 0, done.stderr
    assert events(done.stdout, "resumed")[0]["step"] == newest_steps[-1]
    assert not list(tmp_path.glob(".ckpt-*.tmp-*"))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [
        newest_steps[-1] + 2,
        newest_steps[-1] + 1,
    ]


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    base = (
        "--model",
        "mlp",
        "--steps",
        "20",
        "--checkpoint-every",
        "5",
        "--keep-checkpoints",
        "3",
        "--checkpoint-dir",
        str(tmp_path),
    )
    first = run_module("workloads.runtime.train", "--metrics-port", "0", "--threads", "1", *base)
    assert first.returncode == 0, first.stderr
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 15, 10]  # keep 3
    newest = ckpt.checkpoint_path(tmp_path, 20)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated copy
    again = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        *base[:2],
        "--steps",
        "25",
        *base[4:],
    )
    assert again.returncode == 0, again.stderr
    assert "skipping unreadable checkpoint" in again.stderr and "ckpt-00000020.pt" in again.stderr
    assert events(again.stdout, "resumed")[0]["step"] == 15


def test_export_is_weights_only_and_loads(tmp_path: Path) -> None:
    result = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        "--model",
        "mlp",
        "--preset",
        "tiny",
        "--classes",
        "3",
        "--steps",
        "5",
        "--export-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"] == "mlp" and meta["config"]["classes"] == 3 and meta["step"] == 5
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert meta["param_sha256"] == ckpt.state_digest(state)
    config, model = load_model(tmp_path, torch.device("cpu"))
    assert model(torch.zeros(2, config.in_features)).shape == (2, 3)  # type: ignore[union-attr]


def test_two_rank_ddp_interrupted_and_resumed_equals_uninterrupted(
    tmp_path: Path, background: list[Running]
) -> None:
    def torchrun(*args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
            "-m",
            "workloads.runtime.train",
            "--metrics-port",
            "0",
            "--threads",
            "1",
            "--device",
            "cpu",
            *args,
        ]

    common = (*LM, "--steps", "40", "--log-every", "1", "--checkpoint-every", "1000")
    env = runtime_env()
    full = start(torchrun(*common, "--checkpoint-dir", str(tmp_path / "a")), env)
    background.append(full)
    code, out = full.finish(timeout=120)
    assert code == 0, full.report()
    assert events(out, "start")[0]["world_size"] == 2
    expected = events(out, "done")[0]["param_sha256"]

    run = start(torchrun(*common, "--checkpoint-dir", str(tmp_path / "b")), env)
    background.append(run)
    run.wait_for(lambda e: e["event"] == "step" and e["step"] >= 5)
    run.signal(signal.SIGTERM)  # torchrun forwards it to both workers
    run.finish(timeout=60)
    saved = ckpt.list_checkpoints(tmp_path / "b")
    assert saved and saved[0][0] < 40, "the interrupted run must have saved early"
    state = torch.load(saved[0][1], weights_only=True)
    assert len(state["rng"]) == 2 and state["world_size"] == 2

    resumed = start(torchrun(*common, "--checkpoint-dir", str(tmp_path / "b")), env)
    background.append(resumed)
    code, out = resumed.finish(timeout=120)
    assert code == 0, resumed.report()
    assert events(out, "resumed")[0]["step"] == saved[0][0]
    assert events(out, "done")[0]["param_sha256"] == expected


def test_mlflow_logging_and_its_absence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from workloads.runtime.telemetry import Telemetry

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    options = {
        "rank": 0,
        "local_rank": 0,
        "metrics_port": 0,
        "run_name": "t",
        "params": {"lr": 0.1},
    }
    telemetry = Telemetry(mlflow_run_id=None, **options)  # type: ignore[arg-type]
    run_id = telemetry.mlflow_run_id
    assert run_id
    telemetry.step(5, 1.5, 100.0)
    telemetry.step(10, 1.25, 100.0)
    telemetry.close("KILLED")
    resumed = Telemetry(mlflow_run_id=run_id, **options)  # type: ignore[arg-type]
    assert resumed.mlflow_run_id == run_id  # a resumed job continues the same MLflow run
    resumed.step(15, 1.0, 100.0)
    resumed.close("FINISHED")
    (loss_file,) = store.glob(f"*/{run_id}/metrics/loss")
    assert [line.split()[1:] for line in loss_file.read_text().splitlines()] == [
        ["1.5", "5"],
        ["1.25", "10"],
        ["1.0", "15"],
    ]

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` -> ImportError
    with caplog.at_level("WARNING"):
        missing = Telemetry(mlflow_run_id=None, **options)  # type: ignore[arg-type]
        missing.step(1, 1.0, 1.0)
        missing.close("FINISHED")
    assert missing.mlflow_run_id is None
    warnings = [r.message for r in caplog.records if "mlflow is not installed" in r.message]
    assert len(warnings) == 1


def test_file_data_formats(tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    lm = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        "--model",
        "transformer",
        "--seq-len",
        "32",
        "--data",
        str(text),
        "--batch-size",
        "4",
        "--steps",
        "3",
    )
    assert lm.returncode == 0, lm.stderr

    table = tmp_path / "csv"
    table.mkdir()
    rows = [",".join(["0.5"] * 16 + [str(i % 4)]) for i in range(40)]
    (table / "part.csv").write_text("# features..., label\n" + "\n".join(rows) + "\n")
    mlp = run_module(
        "workloads.runtime.train",
        "--metrics-port",
        "0",
        "--threads",
        "1",
        "--model",
        "mlp",
        "--data",
        str(table),
        "--batch-size",
        "8",
        "--steps",
        "3",
    )
    assert mlp.returncode == 0, mlp.stderr

    (table / "part.csv").write_text("\n".join([*rows, "1,2,3"]) + "\n")
    from workloads.runtime.common import UsageError
    from workloads.runtime.data import make_dataset
    from workloads.runtime.models import MLPConfig

    with pytest.raises(UsageError, match=r"part.csv:41: 3 columns, expected 17"):
        make_dataset(MLPConfig(), str(table), 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--preset", "huge"], "--preset 'huge' is not a transformer preset"),
        (["--n-heads", "3"], "d_model (64) must be divisible by n_heads (3)"),
        (["--hidden", "8"], "--hidden do not apply to --model transformer"),
        (["--data", "/nonexistent"], "--data must be 'synthetic' or a directory"),
        (["--model", "mlp", "--data", "/"], "no *.csv files found"),
        (["--model", "cnn"], "invalid choice: 'cnn'"),
        (["--device", "cuda"], "no CUDA device is visible"),
        (["--batch-size", "64", "--synthetic-samples", "10"], "fewer than --batch-size 64"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from workloads.runtime import train
    from workloads.runtime.common import run_cli

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = run_cli("train", train.main, ["--metrics-port", "0", *args])
    finally:  # main() installs its stop handlers; give pytest its own back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.startswith("train: error: ")
    assert err.count("\n") == 1


def test_bad_arguments_from_the_command_line_have_no_traceback() -> None:
    result = run_module("workloads.runtime.train", "--steps", "-3")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.strip() == "train: error: --steps must be >= 1 (see --help)"
