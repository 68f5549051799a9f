"""Kubernetes resource quantities: parse, compare and format.

Pure Python, shared by the settings model, the components and the policy rules.
Manifests always carry quantities as strings ("16Gi", "500m", "4").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
}
_DECIMAL |= {"k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9)}
_DECIMAL |= {"T": Decimal(10**12), "P": Decimal(10**15), "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^([+]?[0-9]*\.?[0-9]+)([eE][-+]?[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$")


class QuantityError(ValueError):
    pass


def parse(value: str | int | float) -> Decimal:
    """The value of a quantity in base units (cores for CPU, bytes for memory)."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise QuantityError(
            f"{value!r} is not a Kubernetes quantity (examples: '500m', '4', '16Gi', '1Ti')"
        )
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number + (exponent or ""))
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise QuantityError(f"{value!r} is not a number") from exc
    suffix = suffix or ""
    if exponent and suffix:
        raise QuantityError(f"{value!r}: an exponent cannot be combined with a suffix")
    return amount * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def normalize(value: str | int | float) -> str:
    """Validate a quantity and return it as the string a manifest carries."""
    parse(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cpu_millis(value: str | int | float) -> int:
    return int(parse(value) * 1000)


def bytes_of(value: str | int | float) -> int:
    return int(parse(value))


def mebibytes(value: str | int | float) -> float:
    return float(parse(value) / 2**20)
