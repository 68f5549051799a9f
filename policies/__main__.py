"""The mlplatform policy pack: `pulumi preview --policy-pack policies
--policy-pack-config policies/config/<stack>.json`.

Only this file builds the PolicyPack (which starts the policy server); the
rules live in policies/rules/ and run offline too (tools/policy.py).
"""

import sys
from pathlib import Path

# The rules share the platform's catalog and GPU instance table (infra/*.py,
# pure Python): make the repository importable from the pack's directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.pack import build_policies

PolicyPack(
    name="mlplatform",
    description="GPU limits and platform hygiene for mlplatform stacks",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=build_policies(),
)
