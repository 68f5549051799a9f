"""batch.py: every record exactly once across shards and retries, locally and on S3."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from workloads.runtime.batch import run_shard, shard_files
from workloads.runtime.contract import EXIT_USAGE
from workloads.runtime.inference import Predictor
from workloads.runtime.storage import LocalStore, S3Store, Store

from .conftest import events, run_module, runtime_env

CPU = torch.device("cpu")
SHARDS = 3


def write_inputs(root: Path, files: int = 5) -> dict[tuple[str, int], list[float]]:
    """Files of varying record counts (one blank line too); returns (file, line) -> input."""
    records: dict[tuple[str, int], list[float]] = {}
    for f in range(files):
        lines = []
        for r in range(3 + 4 * f):
            row = [float(f), float(r)] + [0.25] * 14
            lines.append(
                json.dumps({"input": row, "id": f"f{f}-r{r}"} if r % 2 else {"input": row})
            )
        lines.insert(1, "")  # blank lines are not records
        name = f"sub/in-{f:02d}.jsonl" if f == 4 else f"in-{f:02d}.jsonl"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        for number, line in enumerate(lines, start=1):
            if line:
                records[(name, number)] = json.loads(line)["input"]
    (root / ".in-99.jsonl.tmp-x").write_text('{"input": "ignored: hidden"}\n')
    (root / "notes.txt").write_text("not an input\n")
    return records


def read_outputs(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.list(".jsonl"):
        out += [json.loads(line) for line in store.lines(name)]
    return out


def check_exactly_once(
    outputs: list[dict[str, Any]], records: dict[tuple[str, int], list[float]], predictor: Predictor
) -> None:
    seen = Counter((o["source"], o["line"]) for o in outputs)
    assert set(seen) == set(records) and set(seen.values()) == {1}
    for o in outputs:
        expected_id = f"{o['source']}:{o['line']}"
        assert o["id"] == expected_id or o["id"].startswith("f")
        row = records[(o["source"], o["line"])]
        (want,) = predictor.predict([predictor.parse_instances([row])])
        assert o["label"] == int(want["label"][0])
        assert torch.allclose(torch.tensor(o["logits"]), want["logits"][0], atol=1e-6)


def test_sharding_is_a_deterministic_partition() -> None:
    files = [f"f{i}.jsonl" for i in (5, 3, 9, 1, 7, 0, 2)]
    parts = [shard_files(files, i, 3) for i in range(3)]
    assert sorted(f for part in parts for f in part) == sorted(files)
    assert parts[0] == ["f0.jsonl", "f3.jsonl", "f9.jsonl"]
    assert parts == [shard_files(list(reversed(files)), i, 3) for i in range(3)]


def run_all_shards_with_a_failure(
    inputs: Store, outputs: Store, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shard 1 dies after its first forward pass; then every shard is retried."""
    calls = {"n": 0}
    real_predict = predictor.predict

    def flaky(samples: list[Any]) -> list[Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("node lost")
        return real_predict(samples)

    def shard(index: int) -> dict[str, Any]:
        return run_shard(
            inputs,
            outputs,
            index=index,
            count=SHARDS,
            batch_size=4,
            load_predictor=lambda: predictor,
            model_name="m",
        )

    shard(0)
    monkeypatch.setattr(predictor, "predict", flaky)
    with pytest.raises(RuntimeError, match="node lost"):
        shard(1)
    monkeypatch.setattr(predictor, "predict", real_predict)
    assert not outputs.exists("part-00001-of-00003.jsonl"), "a failed shard published a part"
    assert not outputs.exists("part-00001-of-00003.done.json")

    results = [shard(i) for i in range(SHARDS)]  # the Job's retries, and a duplicate of shard 0
    assert results[0] == {"skipped": True, "shard": 0}
    assert results[1]["records"] > 0 and results[2]["records"] > 0


def test_local_shards_cover_every_record_once_across_retries(
    tmp_path: Path, mlp_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = write_inputs(tmp_path / "in")
    predictor = Predictor.load(mlp_export, CPU)
    outputs = LocalStore(tmp_path / "out")
    run_all_shards_with_a_failure(LocalStore(tmp_path / "in"), outputs, predictor, monkeypatch)
    check_exactly_once(read_outputs(outputs), records, predictor)
    markers = sorted(p.name for p in (tmp_path / "out").glob("*.done.json"))
    assert markers == [f"part-{i:05d}-of-00003.done.json" for i in range(SHARDS)]
    marker = json.loads((tmp_path / "out" / markers[1]).read_text())
    assert marker["inputs"] == ["in-01.jsonl", "sub/in-04.jsonl"]
    assert not list((tmp_path / "out").glob(".*tmp*")), "temp files left behind"


def test_s3_shards_cover_every_record_once_across_retries(
    tmp_path: Path, mlp_export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    records = write_inputs(tmp_path / "in")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="data")
        for path in (tmp_path / "in").rglob("*"):
            if path.is_file():
                key = f"jobs/in/{path.relative_to(tmp_path / 'in').as_posix()}"
                s3.put_object(Bucket="data", Key=key, Body=path.read_bytes())
        predictor = Predictor.load(mlp_export, CPU)
        outputs = S3Store("s3://data/jobs/out/")
        run_all_shards_with_a_failure(S3Store("s3://data/jobs/in"), outputs, predictor, monkeypatch)
        check_exactly_once(read_outputs(outputs), records, predictor)
        keys = sorted(
            o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="jobs/out/")["Contents"]
        )
        assert keys == sorted(
            [f"jobs/out/part-{i:05d}-of-00003.jsonl" for i in range(SHARDS)]
            + [f"jobs/out/part-{i:05d}-of-00003.done.json" for i in range(SHARDS)]
        )


def test_cli_reads_the_indexed_job_environment(tmp_path: Path, mlp_export: Path) -> None:
    records = write_inputs(tmp_path / "in")
    args = (
        "--model-dir",
        str(mlp_export),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--threads",
        "1",
    )
    env = runtime_env(JOB_COMPLETION_INDEX="1", JOB_COMPLETIONS="2")
    first = run_module("workloads.runtime.batch", *args, env=env)
    assert first.returncode == 0, first.stderr
    (done,) = events(first.stdout, "shard_complete")
    expected = sum(1 for name, _ in records if name in ("in-01.jsonl", "in-03.jsonl"))
    assert (done["shard"], done["num_shards"], done["records"]) == (1, 2, expected)
    again = run_module("workloads.runtime.batch", *args, env=env)
    assert again.returncode == 0 and events(again.stdout, "skipped")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "in-00.jsonl:2: not valid JSON"),
        ('{"features": [1]}', 'in-00.jsonl:2: a record must be an object with an "input"'),
        (
            '{"input": [1, 2]}',
            "in-00.jsonl:2: instances: rows have 2 features; this model expects 16",
        ),
    ],
)
def test_bad_records_stop_the_shard_naming_file_and_line(
    tmp_path: Path,
    mlp_export: Path,
    line: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workloads.runtime import batch
    from workloads.runtime.common import run_cli

    (tmp_path / "in").mkdir()
    good = json.dumps({"input": [0.0] * 16})
    (tmp_path / "in" / "in-00.jsonl").write_text(f"{good}\n{line}\n")
    code = run_cli(
        "batch",
        batch.main,
        [
            "--model-dir",
            str(mlp_export),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--shard-index",
            "0",
            "--num-shards",
            "1",
        ],
    )
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.startswith("batch: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out" / "part-00000-of-00001.jsonl").exists()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "3"},
            [],
            "shard index 3 is not in [0, 3)",
        ),
        ({"JOB_COMPLETION_INDEX": "x"}, [], "JOB_COMPLETION_INDEX='x' is not an integer"),
        ({}, ["--num-shards", "0"], "number of shards must be >= 1"),
    ],
)
def test_bad_shard_settings_exit_2(
    env: dict[str, str],
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workloads.runtime import batch
    from workloads.runtime.common import run_cli

    for key in ("JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = run_cli(
        "batch", batch.main, ["--model-dir", "unused", "--input", "a", "--output", "b", *args]
    )
    assert code == EXIT_USAGE and message in capsys.readouterr().err
