"""The offline runner of the policy rules (policies/rules/): the same rules the
Pulumi policy pack runs, on the props the mocks recorded, with the thresholds
from the stack settings."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from infra.config_types import ConfigError
from mlplatform.loading import load_settings
from mlplatform.settings import PlatformSettings
from policies import rules
from tools.offline import ROOT, Run, read_stack_config


def resources(run: Run) -> list[rules.Resource]:
    """What the engine would hand a policy: custom resources (not providers or
    components) with their input props."""
    return [
        rules.Resource(r.type, r.name, r.inputs)
        for r in run.records
        if r.custom and not r.type.startswith("pulumi:providers:")
    ]


def evaluate(run: Run, settings: PlatformSettings) -> list[rules.Finding]:
    return rules.evaluate(resources(run), settings.policy_config(), settings.policy.enforcement)


def pack_config(settings: PlatformSettings) -> dict[str, Any]:
    """`--policy-pack-config` for the real pack: each rule's enforcement and the
    thresholds it reads, from the stack settings."""
    values = settings.policy_config().as_mapping()
    config: dict[str, Any] = {}
    for r in rules.RULES:
        entry: dict[str, Any] = {
            "enforcementLevel": settings.policy.enforcement.get(r.name, r.enforcement)
        }
        entry.update({key: values[key] for key in r.config_keys})
        config[r.name] = entry
    return config


def pack_config_json(settings: PlatformSettings) -> str:
    return json.dumps(pack_config(settings), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or --check) policies/config/<stack>.json for every Pulumi.<stack>.yaml."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for stack_file in sorted(ROOT.glob("Pulumi.*.yaml")):
        stack = stack_file.name.split(".")[1]
        try:
            settings = load_settings(read_stack_config(stack_file), stack)
        except ConfigError as exc:
            print(f"error: {stack_file.name}: {exc}", file=sys.stderr)
            return 2
        target = ROOT / "policies" / "config" / f"{stack}.json"
        text = pack_config_json(settings)
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(str(target.relative_to(ROOT)))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    if stale:
        print(
            f"error: stale policy config ({', '.join(stale)}): run `make policy-config`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
