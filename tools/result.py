"""What the offline preview learned about one stack: written by tools/preview.py,
rendered into plan.md by tools/plan.py (which is why it lives in neither)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlplatform.settings import PlatformSettings
from tools.offline import Run
from tools.schema import SchemaProblem

EXIT_OK, EXIT_POLICY, EXIT_CONFIG, EXIT_SCHEMA = 0, 1, 2, 3


@dataclass
class Preview:
    """Everything the preview learned about one stack."""

    stack: str
    settings: PlatformSettings
    run: Run
    manifests: dict[str, dict[str, Any]]  # relative path -> manifest
    schema_problems: dict[str, list[SchemaProblem]] = field(default_factory=dict)
    unvalidated: dict[str, str] = field(default_factory=dict)  # path -> reason
    crd_validated: dict[str, str] = field(default_factory=dict)  # path -> against what
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mandatory_findings(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["level"] == "mandatory"]

    @property
    def exit_code(self) -> int:
        if self.schema_problems:
            return EXIT_SCHEMA
        if self.mandatory_findings:
            return EXIT_POLICY
        return EXIT_OK
