"""Read a platform stack's outputs the way an app's deploy job would, and check
them against the contract (infra/outputs.py, docs/stack-outputs.schema.json).

    pulumi stack output --json -s myorg/mlplatform/prod | python examples/read_outputs.py
    python examples/read_outputs.py --stack myorg/mlplatform/prod     (runs the CLI itself)
    python examples/read_outputs.py --file build/prod/outputs.json    (the offline preview's)

Prints the inference endpoints, GPU capacity and dashboards; exits 1 when the
outputs break the contract. Secrets stay "[secret]" unless you pass
--show-secrets to the CLI yourself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # an app would copy the model

from mlplatform.outputs import StackOutputs


def load(args: argparse.Namespace) -> dict[str, object]:
    if args.file:
        return json.loads(Path(args.file).read_text())
    if args.stack:
        out = subprocess.run(
            ["pulumi", "stack", "output", "--json", "--stack", args.stack],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)
    return json.loads(sys.stdin.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", help="a JSON file of the outputs")
    source.add_argument("--stack", help="read with `pulumi stack output --json --stack STACK`")
    args = parser.parse_args(argv)
    try:
        outputs = StackOutputs.model_validate(load(args))
    except ValidationError as exc:
        print(f"error: the outputs break the contract:\n{exc}", file=sys.stderr)
        return 1
    print(
        f"environment {outputs.environment}: cluster {outputs.cluster_name}, "
        f"{outputs.gpu_capacity} GPUs at full scale"
    )
    for key, endpoint in sorted(outputs.inference_endpoints.items()):
        print(f"  {key}: {endpoint.url}/v2/models/{endpoint.model}/infer ({endpoint.protocol})")
    for uid, title in sorted(outputs.monitoring.dashboards.items()):
        print(f"  dashboard {title} (uid {uid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
