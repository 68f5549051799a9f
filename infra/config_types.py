"""Building blocks of the settings models: the strict camelCase base model,
field types (DNS labels, quantities, CIDRs), and errors that name key paths.

Shared by every settings model (each lives beside the component it configures)
and by the composition root (mlplatform/), which assembles them.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import typing
from typing import Annotated, Any, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel

from infra import catalog, quantity

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

Loc = tuple[str | int, ...]


class FieldProblems(ValueError):
    """Raised by a model validator to blame specific fields (paths relative to
    the model being validated), so the final message names the exact key."""

    def __init__(self, problems: list[tuple[Loc, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(p)}: {m}" for p, m in problems))


class ConfigError(pulumi.RunError):
    """Invalid stack configuration. A RunError, so `pulumi up` prints the message
    without a traceback; the offline preview exits 2 with it."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems  # (key path, message)
        lines = [f"  {path}: {msg}" for path, msg in problems]
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"invalid stack configuration ({len(problems)} {noun}):\n" + "\n".join(lines)
        )


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f"[{json.dumps(part)}]"  # a map key such as a label name
        else:
            out += f".{part}" if out else str(part)
    return out


# ---------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    try:
        return quantity.normalize(value)
    except quantity.QuantityError as exc:
        raise ValueError(str(exc)) from None


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Quantity = Annotated[str, BeforeValidator(_quantity)]
Cidr = Annotated[str, AfterValidator(_cidr)]
PriorityClassName = Literal[
    "serving-critical", "training-high", "training-default", "training-preemptible"
]
assert typing.get_args(PriorityClassName) == catalog.PRIORITY_CLASS_NAMES


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )


def check_scaling(min_size: int, desired: int | None, max_size: int) -> None:
    problems: list[tuple[Loc, str]] = []
    if min_size > max_size:
        problems.append((("minSize",), f"{min_size} is greater than maxSize ({max_size})"))
    if desired is not None and not min_size <= desired <= max_size:
        problems.append(
            (
                ("desiredSize",),
                f"{desired} must be between minSize ({min_size}) and maxSize ({max_size})",
            )
        )
    if problems:
        raise FieldProblems(problems)


def unknown_key_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (allowed: {', '.join(sorted(allowed))})"
