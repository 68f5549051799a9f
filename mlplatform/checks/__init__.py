"""The checks that span parts of the stack configuration, one module per concern.

Each module has `problems(s: StackSettings) -> [(key path, message)]`; the
model validator of mlplatform/settings.py's PlatformSettings runs them all
(in CHECKS order) and reports every problem at once (exit 2, key paths).
A new cross-part check goes into the module of its concern, or a new module
listed in CHECKS.
"""

from __future__ import annotations

from mlplatform.checks import capacity, cluster, queueing, serving, workloads

CHECKS = (cluster, workloads, serving, queueing, capacity)
