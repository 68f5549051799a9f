"""What a change does to the stacks, as Markdown for a pull-request comment.

    make diff BASE=origin/main STACK=prod
    python -m tools.diff --base origin/main --stack dev staging prod \\
        [--out diff.md] [--full-out diff-full.md] [--limit 60000]

Renders each stack with the offline preview (`tools.preview`, in a subprocess
of this interpreter) twice: at BASE, exported with `git archive` into a
temporary directory (the checkout, its index and its worktrees are not
touched), and in the working tree. All renders run in parallel. The report:

- a summary line per stack (`3 added, 1 removed, 5 changed`);
- resources added and removed (type and Pulumi name), and changed ones with
  the field paths that changed (`spec.template.spec.containers[server].image:
  a → b`, `scalingConfig.maxSize: 4 → 6`), never whole objects; long values
  are cut around where they differ; secrets stay `[secret]`;
- GPU capacity (total and per node group) and team GPU quotas, before → after;
- policy findings that are new and that are resolved.

The report is capped (`--limit`, default 60,000 characters: GitHub refuses
comments over 65,536) and then ends with a notice of what was left out and
where the full report is (`--full-out`, which is never capped).

A stack with no stack file at BASE shows everything as added. A BASE that does
not render is reported as such (and its stack shows everything as added).

Exit codes: 0 the report was produced (whatever it says); 1 the report was
produced but the change itself does not render for some stack (the report
says why); 2 no report (BASE is not a commit, no such stack, not a git
repository), with one message on stderr (and in --out).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.offline import ROOT, preview_process

GITHUB_COMMENT_LIMIT = 65_536
DEFAULT_LIMIT = 60_000  # room for whatever the workflow adds around the report
MAX_VALUE = 60  # characters of one value shown in a change
MAX_FIELDS = 25  # changed fields shown per resource in the capped report
NOTICE_RESERVE = 900  # characters kept free for the truncation notice
SECRET = "[secret]"
ABSENT: Any = ...  # a field that does not exist on one side
EXIT_OK, EXIT_HEAD_BROKEN, EXIT_ERROR = 0, 1, 2
QUOTA_TYPE = "kubernetes:core/v1:ResourceQuota"
GPU_QUOTA_KEY = "requests.nvidia.com/gpu"
# Options that change what the engine does to a resource (replacements, deletes).
# dependsOn and aliases change no cloud object, so they are not reported.
REPORTED_OPTIONS = (
    "protect",
    "provider",
    "deleteBeforeReplace",
    "retainOnDelete",
    "ignoreChanges",
    "replaceOnChanges",
    "customTimeouts",
    "additionalSecretOutputs",
    "import",
)

Change = tuple[str, Any, Any]  # (field path, before, after); ABSENT marks absence
ResourceKey = tuple[str, str]  # (type, Pulumi name)


class DiffError(Exception):
    """No report can be produced (bad ref, unknown stack, no git)."""


# ---------------------------------------------------------------------------
# Rendering a tree
# ---------------------------------------------------------------------------


@dataclass
class Render:
    """One offline preview's artifacts, or why there are none."""

    ok: bool  # artifacts were read (or the stack does not exist: `missing`)
    resources: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    missing: bool = False  # no Pulumi.<stack>.yaml in this tree
    error: str = ""  # why not ok
    schema_errors: str = ""  # the preview rendered but schema validation failed (exit 3)


def _preview_errors(
    result: subprocess.CompletedProcess[str], only_errors: bool = False, limit: int = 2000
) -> str:
    """What the preview said on stderr (only its `error:` lines, for schema failures)."""
    text = (result.stderr or result.stdout or "").strip()
    if only_errors:
        text = "\n".join(line for line in text.splitlines() if line.startswith("error:"))
    return text if len(text) <= limit else "…" + text[-limit:]


def _resources(records: list[dict[str, Any]]) -> dict[ResourceKey, dict[str, Any]]:
    """(type, name) -> what is compared: inputs, the options that matter, the parent."""
    seen: dict[ResourceKey, int] = {}
    for r in records:
        seen[(r["type"], r["name"])] = seen.get((r["type"], r["name"]), 0) + 1
    out: dict[ResourceKey, dict[str, Any]] = {}
    for r in records:
        key = (r["type"], r["name"])
        if seen[key] > 1:  # the same type and name under parents of different types
            key = (r["type"], f"{r['name']} (in {r.get('parent')})")
        options = r.get("options") or {}
        out[key] = {
            "inputs": r.get("inputs") or {},
            "options": {k: options[k] for k in REPORTED_OPTIONS if k in options},
            "parent": r.get("parent"),
        }
    return out


def render(tree: Path, stack: str, out: Path, timeout: float = 900) -> Render:
    """Run the offline preview of `stack` in `tree` and read its artifacts.

    A preview that exits 1 (mandatory policy findings) or 3 (schema failures)
    still wrote everything; exit 2 (invalid configuration) and crashes did not.
    """
    if not (tree / f"Pulumi.{stack}.yaml").is_file():
        return Render(ok=True, missing=True)
    if not (tree / "tools" / "preview.py").is_file():
        return Render(ok=False, error="this revision has no offline preview (tools/preview.py)")
    try:
        result = preview_process(stack, out, tree, timeout)
    except subprocess.TimeoutExpired:
        return Render(ok=False, error=f"the offline preview took over {timeout:.0f} s")
    build = out / stack
    files = [build / name for name in ("resources.json", "outputs.json", "policy.json")]
    if result.returncode not in (0, 1, 3) or not all(f.is_file() for f in files):
        return Render(
            ok=False,
            error=f"the offline preview exited {result.returncode}:\n{_preview_errors(result)}",
        )
    resources, outputs, findings = (json.loads(f.read_text()) for f in files)
    return Render(
        ok=True,
        resources=_resources(resources),
        outputs=outputs,
        findings=findings,
        schema_errors=_preview_errors(result, only_errors=True) if result.returncode == 3 else "",
    )


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise DiffError("git is not installed") from exc


def export_revision(repo: Path, ref: str, target: Path) -> str:
    """Extract the tree at `ref` into `target`; returns the commit's SHA."""
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        if _git(repo, "rev-parse", "--git-dir").returncode != 0:
            raise DiffError(f"{repo} is not a git repository")
        raise DiffError(
            f"BASE {ref!r} is not a commit in {repo} (a typo, or not fetched yet: git fetch origin)"
        )
    sha = commit.stdout.decode().strip()
    archive = _git(repo, "archive", "--format=tar", sha)
    if archive.returncode != 0:
        message = archive.stderr.decode(errors="replace").strip()
        raise DiffError(f"git archive {ref} failed: {message}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return sha


# ---------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def _join(path: str, key: Any) -> str:
    """`a.b` for plain keys, `a["nvidia.com/gpu"]` for keys with dots or slashes."""
    key = str(key)
    if _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _list_key(item: Any) -> str | None:
    """Lists of named things (containers, env, ports, volumes, alert rules) match by name."""
    if isinstance(item, dict):
        for name in ("name", "alert", "record"):
            if isinstance(item.get(name), str):
                return str(item[name])
    return None


def _json_container(text: Any) -> Any:
    """A JSON object or array held in a string (IAM policies, dashboards), else None."""
    if not isinstance(text, str) or text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _list_changes(before: list[Any], after: list[Any], path: str) -> list[Change]:
    keys_b, keys_a = [_list_key(x) for x in before], [_list_key(x) for x in after]
    if (
        all(k is not None for k in keys_b + keys_a)
        and len(set(keys_b)) == len(keys_b)
        and len(set(keys_a)) == len(keys_a)
    ):
        named_b = dict(zip(keys_b, before, strict=True))
        named_a = dict(zip(keys_a, after, strict=True))
        out: list[Change] = []
        for k in sorted(set(named_b) | set(named_a), key=str):
            out += changed_paths(named_b.get(k, ABSENT), named_a.get(k, ABSENT), f"{path}[{k}]")
        return out
    # Align the lists, so one item inserted is one change, not a shifted tail.
    matcher = difflib.SequenceMatcher(
        None, [_canon(x) for x in before], [_canon(x) for x in after], autojunk=False
    )
    out = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)
        for n in range(paired):
            out += changed_paths(before[i1 + n], after[j1 + n], f"{path}[{j1 + n}]")
        out += [(f"{path}[{i}]", before[i], ABSENT) for i in range(i1 + paired, i2)]
        out += [(f"{path}[{j}]", ABSENT, after[j]) for j in range(j1 + paired, j2)]
    return out


def _text_changes(before: str, after: str, path: str) -> list[Change]:
    """Multi-line strings (scripts, config files): the changed lines, by line number."""
    lines_b, lines_a = before.splitlines(), after.splitlines()
    matcher = difflib.SequenceMatcher(None, lines_b, lines_a, autojunk=False)
    out: list[Change] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        where = f"line {j1 + 1}" if j2 - j1 <= 1 else f"lines {j1 + 1}-{j2}"
        if op == "delete":
            where = f"line {i1 + 1}" if i2 - i1 == 1 else f"lines {i1 + 1}-{i2}"
        out.append(
            (
                f"{path} ({where})",
                "\n".join(lines_b[i1:i2]) if i2 > i1 else ABSENT,
                "\n".join(lines_a[j1:j2]) if j2 > j1 else ABSENT,
            )
        )
    return out or [(path, before, after)]  # only line endings differ


def changed_paths(before: Any, after: Any, path: str = "") -> list[Change]:
    """(path, before, after) for each leaf that differs, in a stable order."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[Change] = []
        for k in sorted(set(before) | set(after), key=str):
            out += changed_paths(before.get(k, ABSENT), after.get(k, ABSENT), _join(path, k))
        return out
    if isinstance(before, list) and isinstance(after, list):
        return _list_changes(before, after, path)
    if before == after:
        return []
    if isinstance(before, str) and isinstance(after, str):
        parsed_b, parsed_a = _json_container(before), _json_container(after)
        if parsed_b is not None and parsed_a is not None:
            return changed_paths(parsed_b, parsed_a, path) or [(path, before, after)]
        if "\n" in before.strip() or "\n" in after.strip():
            return _text_changes(before, after, path)
    return [(path or "(value)", before, after)]


def resource_changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """Inputs by their own paths; options as `(options).x`; the parent as `(parent)`."""
    return (
        changed_paths(before.get("inputs", {}), after.get("inputs", {}))
        + changed_paths(before.get("options", {}), after.get("options", {}), "(options)")
        + changed_paths(before.get("parent"), after.get("parent"), "(parent)")
    )


@dataclass
class StackReport:
    """What one stack's change does."""

    stack: str
    added: list[ResourceKey] = field(default_factory=list)
    removed: list[ResourceKey] = field(default_factory=list)
    changed: list[tuple[ResourceKey, list[Change]]] = field(default_factory=list)
    capacity: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    capacity_total: int | None = None  # after the change
    new_findings: list[dict[str, Any]] = field(default_factory=list)
    resolved_findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    broken: str = ""  # the change does not render: why


def capacity_rows(r: Render) -> dict[str, int]:
    """GPU capacity (outputs) and team GPU quotas (ResourceQuota manifests)."""
    rows: dict[str, int] = {}
    if not r.ok or r.missing:
        return rows
    if "gpuCapacity" in r.outputs:
        rows["GPU capacity (total)"] = int(r.outputs["gpuCapacity"])
    for g in r.outputs.get("gpuNodeGroups") or []:
        rows[f"node group `{g['name']}` max GPUs"] = int(g.get("maxGpus", 0))
    teams = {ns: team for team, ns in (r.outputs.get("teamNamespaces") or {}).items()}
    quotas: dict[str, int] = {}
    for (type_, _), resource in r.resources.items():
        if type_ != QUOTA_TYPE:
            continue
        inputs = resource["inputs"]
        hard = (inputs.get("spec") or {}).get("hard") or {}
        if GPU_QUOTA_KEY in hard:
            ns = str((inputs.get("metadata") or {}).get("namespace", "?"))
            label = f"team `{teams[ns]}`" if ns in teams else f"namespace `{ns}`"
            quotas[f"{label} GPU quota"] = int(float(hard[GPU_QUOTA_KEY]))
    rows.update(quotas)
    if quotas:
        rows["GPU quotas, all teams"] = sum(quotas.values())
    return rows


def _row_order(label: str) -> tuple[int, str]:
    prefixes = ("GPU capacity", "node group", "GPU quotas", "team", "namespace")
    return next((i for i, p in enumerate(prefixes) if label.startswith(p)), 9), label


def _finding_key(f: dict[str, Any]) -> tuple[str, str, str, str]:
    level = str(f.get("level", ""))
    return (
        "0" if level == "mandatory" else "1",
        str(f.get("policy", "")),
        str(f.get("resource", "")),
        str(f.get("message", "")),
    )


def compare(stack: str, before: Render, after: Render, base: str = "BASE") -> StackReport:
    report = StackReport(stack)
    if not after.ok:
        report.broken = after.error
        return report
    if after.missing and before.missing:
        raise DiffError(f"no stack {stack!r}: Pulumi.{stack}.yaml exists neither at BASE nor here")
    b, a = before.resources, after.resources
    report.added = sorted(set(a) - set(b))
    report.removed = sorted(set(b) - set(a))
    report.changed = [
        (k, changes) for k in sorted(set(b) & set(a)) if (changes := resource_changes(b[k], a[k]))
    ]
    cap_b, cap_a = capacity_rows(before), capacity_rows(after)
    report.capacity = [
        (label, cap_b.get(label), cap_a.get(label))
        for label in sorted(set(cap_b) | set(cap_a), key=_row_order)
        if cap_b.get(label) != cap_a.get(label)
    ]
    report.capacity_total = cap_a.get("GPU capacity (total)")
    fb = {_finding_key(f): f for f in before.findings}
    fa = {_finding_key(f): f for f in after.findings}
    report.new_findings = [fa[k] for k in sorted(set(fa) - set(fb))]
    report.resolved_findings = [fb[k] for k in sorted(set(fb) - set(fa))]
    if before.missing:
        report.notes.append(
            f"`{base}` has no `Pulumi.{stack}.yaml`: every resource shows as added."
        )
    elif not before.ok:
        report.notes.append(
            f"**`{base}` does not render**, so every resource shows as added. "
            f"{_one_line(before.error)}"
        )
    elif before.schema_errors:
        report.notes.append(f"`{base}` fails schema validation: {_one_line(before.schema_errors)}")
    if after.missing:
        report.notes.append(
            f"This change deletes `Pulumi.{stack}.yaml`: every resource is removed."
        )
    if after.schema_errors:
        report.notes.append(
            f"**This change fails schema validation** (`make preview STACK={stack}`): "
            f"{_one_line(after.schema_errors)}"
        )
    return report


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return _code(text if len(text) <= limit else text[: limit - 1] + "…")


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value if value else '""'
    else:
        text = json.dumps(value, sort_keys=True)
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def short(value: Any, start: int = 0) -> str:
    """A value cut to MAX_VALUE characters, from `start` (where two values differ)."""
    text = _text(value)
    if text == SECRET or len(text) <= MAX_VALUE:
        return text
    start = max(0, min(start, len(text) - (MAX_VALUE - 1)))  # the leading "…" is one character
    head = "…" if start else ""
    end = start + MAX_VALUE - len(head)
    if end < len(text):
        return head + text[start : end - 1] + "…"
    return head + text[start:end]


def first_difference(before: Any, after: Any) -> int:
    """Where two long values start to differ, less some context."""
    b, a = _text(before), _text(after)
    same = (i for i, (x, y) in enumerate(zip(b, a, strict=False)) if x != y)
    return max(0, next(same, min(len(b), len(a))) - 15)


def _code(text: str) -> str:
    """Inline code that survives backticks in the text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _value(value: Any, start: int = 0) -> str:
    return "∅" if value is ABSENT else _code(short(value, start))


def _change_line(path: str, before: Any, after: Any) -> str:
    start = first_difference(before, after) if ABSENT not in (before, after) else 0
    return f"  - {_code(path)}: {_value(before, start)} → {_value(after, start)}"


def _resource_line(key: ResourceKey) -> str:
    type_, name = key
    return f"- {_code(name)} ({_code(type_)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary(report: StackReport) -> str:
    if report.broken:
        return "**the change does not render**"
    text = (
        f"{len(report.added)} added, {len(report.removed)} removed, {len(report.changed)} changed"
    )
    total = next((r for r in report.capacity if r[0] == "GPU capacity (total)"), None)
    if total and total[1] is not None and total[2] is not None:
        text += f" · GPU capacity {total[1]} → {total[2]} ({total[2] - total[1]:+d})"
    return (
        text
        + f" · {_plural(len(report.new_findings), 'new policy finding')}, "
        + f"{len(report.resolved_findings)} resolved"
    )


@dataclass
class _Item:
    """A unit the cap keeps or leaves out whole."""

    section: str
    lines: list[str]
    resources: int = 0
    fields: int = 0
    findings: int = 0

    @property
    def size(self) -> int:
        return sum(len(line) + 1 for line in self.lines)


@dataclass
class _StackText:
    report: StackReport
    head: list[str]
    items: list[_Item]  # in priority order: findings, then resources
    kept: int = 0  # how many of `items` (a prefix) are shown

    @property
    def items_size(self) -> int:
        return sum(item.size for item in self.items)

    def keep(self, budget: int | None) -> None:
        self.kept = 0
        for item in self.items:
            if budget is not None:
                if item.size > budget:
                    break
                budget -= item.size
            self.kept += 1

    @property
    def left_out(self) -> list[_Item]:
        return self.items[self.kept :]

    def lines(self) -> list[str]:
        if self.report.broken:
            return self.head
        shown = {id(item) for item in self.items[: self.kept]}
        by_section: dict[str, list[_Item]] = {}
        for item in self.items:
            by_section.setdefault(item.section, []).append(item)
        out = list(self.head)
        r = self.report
        counts = [("Added", len(r.added)), ("Removed", len(r.removed)), ("Changed", len(r.changed))]
        if not any(n for _, n in counts):
            out += ["No resource changes.", ""]
        for section, n in counts:
            if not n:
                continue
            out += [f"##### {section} ({n})", ""]
            items = by_section.get(section, [])
            for item in items:
                if id(item) in shown:
                    out += item.lines
            missing = sum(1 for item in items if id(item) not in shown)
            if missing:
                out.append(f"- … {missing} more left out (see the notice at the end)")
            out.append("")
        out += ["##### GPU capacity and quotas", ""]
        if r.capacity:
            out += ["| | before | after | change |", "|---|---:|---:|---:|"]
            for label, b, a in r.capacity:
                delta = "new" if b is None else "gone" if a is None else f"{a - b:+d}"
                out.append(
                    f"| {label} | {'-' if b is None else b} | {'-' if a is None else a} | {delta} |"
                )
        elif r.capacity_total is not None:
            out.append(f"Unchanged: {r.capacity_total} GPUs; team GPU quotas unchanged.")
        else:
            out.append("None.")
        out.append("")
        findings = by_section.get("Policy findings", [])
        if findings:
            out += ["##### Policy findings", ""]
            out += [line for item in findings if id(item) in shown for line in item.lines]
            missing = sum(1 for item in findings if id(item) not in shown)
            if missing:
                out.append(f"- … {missing} more left out (see the notice at the end)")
            out.append("")
        return out


def _finding_line(f: dict[str, Any], what: str) -> str:
    return (
        f"- {what} **{f.get('level', '?')}** {_code(str(f.get('policy', '')))} on "
        f"{_code(str(f.get('resource', '')))}: {' '.join(str(f.get('message', '')).split())}"
    )


def _stack_text(report: StackReport, max_fields: int | None) -> _StackText:
    head = [f"#### `{report.stack}`", ""]
    head += [f"> {note}" for note in report.notes]
    if report.notes:
        head.append("")
    if report.broken:
        fence = "~" * max(3, 1 + max((len(m) for m in re.findall(r"~+", report.broken)), default=0))
        head += [
            f"**This change does not render** (`make preview STACK={report.stack}`):",
            "",
            fence,
            report.broken,
            fence,
            "",
        ]
        return _StackText(report, head, [])
    items = [
        _Item("Policy findings", [_finding_line(f, "new")], findings=1) for f in report.new_findings
    ]
    items += [
        _Item("Policy findings", [_finding_line(f, "resolved")], findings=1)
        for f in report.resolved_findings
    ]
    items += [_Item("Added", [_resource_line(k)], resources=1) for k in report.added]
    items += [_Item("Removed", [_resource_line(k)], resources=1) for k in report.removed]
    for key, changes in report.changed:
        shown = changes if max_fields is None else changes[:max_fields]
        lines = [_resource_line(key)] + [_change_line(*c) for c in shown]
        if len(shown) < len(changes):
            lines.append(f"  - … {len(changes) - len(shown)} more changed fields")
        items.append(_Item("Changed", lines, resources=1, fields=len(changes)))
    return _StackText(report, head, items)


def _share(budget: int, sizes: list[int]) -> list[int]:
    """Split `budget` so that small reports are whole and big ones share the rest."""
    alloc = [0] * len(sizes)
    left = max(budget, 0)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for n, i in enumerate(order):
        alloc[i] = min(sizes[i], left // (len(sizes) - n))
        left -= alloc[i]
    return alloc


def _size(lines: list[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def markdown(
    reports: list[StackReport],
    base: str,
    limit: int | None = DEFAULT_LIMIT,
    *,
    commit: str = "",
    full_report: str = "",
) -> str:
    """The report; with a `limit`, cut to that many characters with a notice.

    `base` is the ref as given and `commit` its SHA; `full_report` says where
    the uncapped report is (a workflow run's artifacts); `make diff` is always
    offered.
    """
    label = _code(base) + (f" ({_code(commit[:8])})" if commit else "")
    top = [f"### Offline preview diff: {label} → this change", ""]
    top += [f"- **{r.stack}**: {summary(r)}" for r in reports]
    top.append("")
    stacks = [_stack_text(r, None if limit is None else MAX_FIELDS) for r in reports]
    if limit is None:
        for s in stacks:
            s.keep(None)
    else:
        fixed = _size(top) + NOTICE_RESERVE
        for s in stacks:
            s.keep(0)
            fixed += _size(s.lines()) + 80  # the "… more left out" lines
        for s, budget in zip(
            stacks, _share(limit - fixed, [s.items_size for s in stacks]), strict=True
        ):
            s.keep(budget)
    lines = top + [line for s in stacks for line in s.lines()]
    truncated = [s for s in stacks if s.left_out]
    if truncated:
        parts = []
        for s in truncated:
            left = s.left_out
            counts = []
            resources = sum(item.resources for item in left)
            if resources:
                fields = sum(item.fields for item in left)
                counts.append(
                    _plural(resources, "resource")
                    + (f" ({_plural(fields, 'changed field')})" if fields else "")
                )
            findings = sum(item.findings for item in left)
            if findings:
                counts.append(_plural(findings, "policy finding"))
            parts.append(f"{' and '.join(counts)} of `{s.report.stack}`")
        stack_args = " ".join(s.report.stack for s in truncated)
        if len(truncated) > 1:
            stack_args = f'"{stack_args}"'
        where = f"{full_report}, or run " if full_report else "Run "
        lines += [
            "---",
            "",
            f"**Report truncated** to stay under GitHub's {GITHUB_COMMENT_LIMIT:,}-character "
            f"comment limit: {'; '.join(parts)} left out. The full report: {where}"
            f"`make diff BASE={base} STACK={stack_args}` locally.",
        ]
    text = "\n".join(lines).rstrip() + "\n"
    if limit is not None and len(text) > limit:  # only if the fixed parts alone are too big
        notice = "\n\n**Report truncated** (cut at the comment limit): run `make diff` locally.\n"
        text = text[: limit - len(notice)] + notice
    return text


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def diff(repo: Path, base: str, stacks: list[str]) -> tuple[list[StackReport], str]:
    """Render every stack at `base` and in `repo`'s working tree (in parallel) and
    compare them. Returns the reports and BASE's commit."""
    with tempfile.TemporaryDirectory(prefix="mlplatform-diff-") as tmp:
        tree = Path(tmp) / "base"
        sha = export_revision(repo, base, tree)
        jobs = [(tree, s, Path(tmp) / "base-build") for s in stacks]
        jobs += [(repo, s, Path(tmp) / "head-build") for s in stacks]
        print(
            f"rendering {', '.join(stacks)} at {base} ({sha[:8]}) and in the working tree…",
            file=sys.stderr,
        )
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 2)) as pool:
            renders = list(pool.map(lambda job: render(*job), jobs))
    reports = [
        compare(stack, before, after, base)
        for stack, before, after in zip(
            stacks, renders[: len(stacks)], renders[len(stacks) :], strict=True
        )
    ]
    return reports, sha


def _run_url() -> str:
    """This GitHub Actions run, when there is one."""
    parts = [os.environ.get(k, "") for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY")]
    run_id = os.environ.get("GITHUB_RUN_ID", "")
    if all(parts) and run_id:
        return f"the artifacts of [this workflow run]({parts[0]}/{parts[1]}/actions/runs/{run_id})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git ref to compare with (origin/main)")
    parser.add_argument(
        "--stack",
        required=True,
        nargs="+",
        action="extend",
        help="one or more stacks (Pulumi.<stack>.yaml); several share one report",
    )
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--full-out", type=Path, help="write the report, never capped, here")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"cap the report at this many characters (default {DEFAULT_LIMIT:,})",
    )
    args = parser.parse_args(argv)
    stacks = list(dict.fromkeys(args.stack))
    try:
        reports, sha = diff(ROOT, args.base, stacks)
    except DiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for path in (args.out, args.full_out):
            if path:
                path.write_text(
                    f"### Offline preview diff: {', '.join(stacks)}\n\n"
                    f"**No report:** {_one_line(str(exc))}\n"
                )
        return EXIT_ERROR
    text = markdown(reports, args.base, args.limit, commit=sha, full_report=_run_url())
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    if args.full_out:
        args.full_out.write_text(markdown(reports, args.base, None, commit=sha))
    broken = [r.stack for r in reports if r.broken]
    if broken:
        print(f"error: the change does not render for {', '.join(broken)}", file=sys.stderr)
        return EXIT_HEAD_BROKEN
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
