"""What a change does to a stack, as Markdown for a pull-request comment.

    make diff BASE=origin/main STACK=prod
    python -m tools.diff --base origin/main --stack prod [--out diff.md]

Renders the stack offline at BASE (a git ref, exported with `git archive` into
a temporary directory) and in the working tree, then reports:
- resources added, removed and changed, with the changed field paths
  (`spec.template.spec.containers[server].image: a -> b`), never whole objects;
- GPU capacity per node group and GPU quota per team, before and after;
- policy findings that are new and that are resolved.
The report stays under GitHub's comment limit (65,536 characters) and says so
when it had to leave items out.

Exit codes: 0 a report was produced (whatever it says), 1 the working tree does
not render (the report says why), 2 the report could not be produced at all.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.offline import ROOT

GITHUB_COMMENT_LIMIT = 65_536
DEFAULT_LIMIT = 60_000  # room for the workflow's own header around the report
MAX_VALUE = 60
SECRET = "[secret]"


class DiffError(Exception):
    """The report cannot be produced (bad ref, no git)."""


# ---------------------------------------------------------------------------
# Rendering a tree
# ---------------------------------------------------------------------------


@dataclass
class Render:
    """One offline preview's artifacts, or why there are none."""

    ok: bool
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def render(tree: Path, stack: str, out: Path) -> Render:
    """Run the offline preview of `stack` in `tree` (exit 1, policy violations, still renders)."""
    if not (tree / f"Pulumi.{stack}.yaml").is_file():
        return Render(ok=True, error=f"no Pulumi.{stack}.yaml")
    if not (tree / "tools" / "preview.py").is_file():
        return Render(ok=False, error="this revision has no offline preview (tools/preview.py)")
    result = subprocess.run(
        [sys.executable, "-m", "tools.preview", "--stack", stack, "--out", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    build = out / stack
    if result.returncode not in (0, 1) or not (build / "resources.json").is_file():
        return Render(ok=False, error=(result.stderr or result.stdout).strip()[-2000:])
    resources = {
        (r["type"], r["name"]): r.get("inputs") or {}
        for r in json.loads((build / "resources.json").read_text())
    }
    return Render(
        ok=True,
        resources=resources,
        outputs=json.loads((build / "outputs.json").read_text()),
        findings=json.loads((build / "policy.json").read_text()),
    )


def export_revision(repo: Path, ref: str, target: Path) -> None:
    """The tree at `ref`, without touching the working tree or the index."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        raise DiffError(f"{ref!r} is not a commit in {repo} (fetch it first: git fetch origin)")
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit.stdout.strip()],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise DiffError(
            f"git archive {ref} failed: {archive.stderr.decode(errors='replace').strip()}"
        )
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")


# ---------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def short(value: Any, start: int = 0) -> str:
    """A value cut to MAX_VALUE characters, from `start` (where two values differ)."""
    text = _text(value)
    if text == SECRET or len(text) <= MAX_VALUE:
        return text
    # Keep the window inside the text (the leading "…" takes one character).
    start = max(0, min(start, len(text) - (MAX_VALUE - 1)))
    head = "…" if start else ""
    end = start + MAX_VALUE - len(head)
    return head + text[start:end] + ("…" if end < len(text) else "")


def first_difference(before: Any, after: Any) -> int:
    """Where two long values start to differ, less some context."""
    b, a = _text(before), _text(after)
    same = (i for i, (x, y) in enumerate(zip(b, a, strict=False)) if x != y)
    return max(0, next(same, min(len(b), len(a))) - 15)


def _key(item: Any) -> str | None:
    """Lists of named things (containers, env, ports, volumes, alert rules) match by name."""
    if isinstance(item, dict):
        for field_name in ("name", "alert"):
            if isinstance(item.get(field_name), str):
                return str(item[field_name])
    return None


def changed_paths(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, before, after) for each leaf that differs; `...` marks absence."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(before) | set(after)):
            sub = f"{path}.{k}" if path else str(k)
            out += changed_paths(before.get(k, ...), after.get(k, ...), sub)
        return out
    if isinstance(before, list) and isinstance(after, list):
        keys_b, keys_a = [_key(x) for x in before], [_key(x) for x in after]
        if (
            all(keys_b)
            and all(keys_a)
            and len(set(keys_b)) == len(keys_b)
            and len(set(keys_a)) == len(keys_a)
        ):
            b, a = dict(zip(keys_b, before, strict=True)), dict(zip(keys_a, after, strict=True))
            out = []
            for k in sorted(set(b) | set(a), key=str):
                out += changed_paths(b.get(k, ...), a.get(k, ...), f"{path}[{k}]")
            return out
        out = []
        for i in range(max(len(before), len(after))):
            out += changed_paths(
                before[i] if i < len(before) else ...,
                after[i] if i < len(after) else ...,
                f"{path}[{i}]",
            )
        return out
    return [] if before == after else [(path or "(value)", before, after)]


@dataclass
class Report:
    stack: str
    base: str
    added: list[tuple[str, str]]
    removed: list[tuple[str, str]]
    changed: list[tuple[tuple[str, str], list[tuple[str, Any, Any]]]]
    capacity: list[tuple[str, int | None, int | None]]  # (label, before, after)
    new_findings: list[dict[str, Any]]
    resolved_findings: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _capacity(r: Render) -> dict[str, int]:
    rows: dict[str, int] = {}
    if r.outputs:
        rows["GPU capacity (total)"] = int(r.outputs.get("gpuCapacity", 0))
        for g in r.outputs.get("gpuNodeGroups") or []:
            rows[f"node group `{g['name']}`"] = int(g["maxGpus"])
    for (type_, _), inputs in r.resources.items():
        if type_ == "kubernetes:core/v1:ResourceQuota":
            hard = (inputs.get("spec") or {}).get("hard") or {}
            if "requests.nvidia.com/gpu" in hard:
                ns = (inputs.get("metadata") or {}).get("namespace", "?")
                rows[f"team `{ns}` GPU quota"] = int(float(hard["requests.nvidia.com/gpu"]))
    return rows


def _finding_key(f: dict[str, Any]) -> tuple[str, str, str]:
    return (f.get("policy", ""), f.get("resource", ""), f.get("message", ""))


def compare(stack: str, base_label: str, before: Render, after: Render) -> Report:
    b, a = before.resources, after.resources
    changed = [(k, paths) for k in sorted(set(b) & set(a)) if (paths := changed_paths(b[k], a[k]))]
    cap_b, cap_a = _capacity(before), _capacity(after)
    capacity = [
        (label, cap_b.get(label), cap_a.get(label))
        for label in sorted(
            set(cap_b) | set(cap_a), key=lambda s: (not s.startswith("GPU capacity"), s)
        )
        if cap_b.get(label) != cap_a.get(label)
    ]
    fb = {_finding_key(f): f for f in before.findings}
    fa = {_finding_key(f): f for f in after.findings}
    report = Report(
        stack=stack,
        base=base_label,
        added=sorted(set(a) - set(b)),
        removed=sorted(set(b) - set(a)),
        changed=changed,
        capacity=capacity,
        new_findings=[fa[k] for k in sorted(set(fa) - set(fb))],
        resolved_findings=[fb[k] for k in sorted(set(fb) - set(fa))],
    )
    if not before.ok:
        report.notes.append(
            f"BASE `{base_label}` could not be rendered, so everything shows as added: "
            f"{before.error}"
        )
    elif before.error:
        report.notes.append(f"BASE `{base_label}` has {before.error}: everything shows as added.")
    return report


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _fmt(value: Any, start: int = 0) -> str:
    return "∅" if value is ... else f"`{short(value, start)}`"


def _change(path: str, before: Any, after: Any) -> str:
    start = first_difference(before, after) if before is not ... and after is not ... else 0
    return f"  - `{path}`: {_fmt(before, start)} → {_fmt(after, start)}"


def _delta(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "new" if before is None else "gone"
    return f"{after - before:+d}"


def markdown(report: Report, limit: int = DEFAULT_LIMIT) -> str:
    """The report, cut to `limit` characters with a notice of what was left out."""
    head = [f"### Offline preview diff: `{report.stack}` (`{report.base}` → this change)", ""]
    summary = (
        f"**{len(report.added)} added, {len(report.removed)} removed, "
        f"{len(report.changed)} changed** · {len(report.new_findings)} new policy findings, "
        f"{len(report.resolved_findings)} resolved"
    )
    head += [summary, ""]
    head += [f"> {note}" for note in report.notes]
    body: list[str] = []
    if report.capacity:
        body += [
            "#### GPU capacity and quotas",
            "",
            "| | before | after | Δ |",
            "|---|---|---|---|",
        ]
        body += [
            f"| {label} | {'-' if b is None else b} | {'-' if a is None else a} | {_delta(b, a)} |"
            for label, b, a in report.capacity
        ]
        body.append("")
    if report.new_findings or report.resolved_findings:
        body += ["#### Policy findings", ""]
        body += [
            f"- new **{f['level']}** `{f['policy']}` on `{f['resource']}`: {f['message']}"
            for f in report.new_findings
        ]
        body += [
            f"- resolved `{f['policy']}` on `{f['resource']}`" for f in report.resolved_findings
        ]
        body.append("")
    items: list[str] = []
    if report.changed:
        items += ["#### Changed", ""]
        for (type_, name), paths in report.changed:
            items.append(f"- `{name}` ({type_})")
            items += [_change(p, b, a) for p, b, a in paths]
        items.append("")
    if report.added:
        items += (
            ["#### Added", ""] + [f"- `{name}` ({type_})" for type_, name in report.added] + [""]
        )
    if report.removed:
        items += (
            ["#### Removed", ""]
            + [f"- `{name}` ({type_})" for type_, name in report.removed]
            + [""]
        )
    if not (report.changed or report.added or report.removed or report.capacity):
        body.append("No changes to the stack's resources.")

    lines = head + body
    size = sum(len(line) + 1 for line in lines)
    kept = 0
    for line in items:
        if size + len(line) + 1 > limit - 400:  # keep room for the notice
            break
        lines.append(line)
        size += len(line) + 1
        kept += 1
    left = len([line for line in items[kept:] if line.startswith(("- ", "  - "))])
    if kept < len(items):
        lines += [
            "",
            f"**Report truncated:** {left} more lines left out to stay under GitHub's "
            f"{GITHUB_COMMENT_LIMIT:,}-character comment limit. The full report is in the "
            "workflow's "
            f"artifacts, or run `make diff BASE={report.base} STACK={report.stack}` locally.",
        ]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def diff(repo: Path, base: str, stack: str, limit: int = DEFAULT_LIMIT) -> tuple[str, bool]:
    """(markdown, whether the working tree rendered)."""
    with tempfile.TemporaryDirectory(prefix="mlplatform-diff-") as tmp:
        tree = Path(tmp) / "base"
        export_revision(repo, base, tree)
        before = render(tree, stack, Path(tmp) / "base-build")
        after = render(repo, stack, Path(tmp) / "head-build")
    if not after.ok:
        text = (
            f"### Offline preview diff: `{stack}`\n\n**This change does not render.** The offline "
            f"preview says:\n\n```\n{after.error}\n```\n"
        )
        return text, False
    return markdown(compare(stack, base, before, after), limit), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", required=True, help="git ref to compare against (e.g. origin/main)"
    )
    parser.add_argument("--stack", required=True, help="stack name (Pulumi.<stack>.yaml)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="report size cap in characters"
    )
    args = parser.parse_args(argv)
    try:
        text, rendered = diff(ROOT, args.base, args.stack, args.limit)
    except DiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0 if rendered else 1


if __name__ == "__main__":
    sys.exit(main())
