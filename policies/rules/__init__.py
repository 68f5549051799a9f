"""The platform's policy rules: pure functions over resources as the Pulumi engine
sees them (type token, camelCase props).

One set of rules, two runners:
- `policies/__main__.py` wraps them into a Pulumi PolicyPack
  (`pulumi preview --policy-pack policies --policy-pack-config policies/config/<stack>.json`);
- the offline preview (`tools/policy.py`) runs them on the props the mocks record
  and writes `build/<stack>/policy.json`.

Nothing here imports Pulumi: the pack's virtualenv has only pulumi-policy, and the
tests call the rules directly. During a real preview some props are still unknown
(None): a rule that cannot see a value does not guess, it skips that check.

The rules live in one module per area: gpu, hygiene, queueing, capacity, efa
(AREAS: the order of docs/policies.md and of evaluate()), all built on core
(inputs, thresholds, the registry and the one pod-template walker).
"""

from __future__ import annotations

from policies.rules import capacity, efa, gpu, hygiene, queueing  # importing registers
from policies.rules.core import (
    RULES,
    Finding,
    PolicyConfig,
    Resource,
    Rule,
    evaluate,
    gpus_per_pod,
    pod_templates,
)
from policies.rules.gpu import gpu_capacity, gpu_in_limits, gpu_quota_capacity

# The order of docs/policies.md and of evaluate(): by area, then as defined
# (an import order that follows the modules' own imports would not keep it).
AREAS = (gpu, hygiene, queueing, capacity, efa)
RULES.sort(
    key=lambda r: [a.__name__ for a in AREAS].index((r.resource_check or r.stack_check).__module__)
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
RULES_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}
assert len(RULE_NAMES) == len(set(RULE_NAMES)), "rule names must be unique"

__all__ = [
    "RULES",
    "RULES_BY_NAME",
    "RULE_NAMES",
    "Finding",
    "PolicyConfig",
    "Resource",
    "Rule",
    "evaluate",
    "gpu_capacity",
    "gpu_in_limits",
    "gpu_quota_capacity",
    "gpus_per_pod",
    "pod_templates",
]
