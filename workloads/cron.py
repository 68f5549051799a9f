"""Validation of CronJob schedules, as the Kubernetes CronJob controller parses them
(robfig/cron's standard parser: five fields, names, ranges, steps, descriptors).

Pure Python: the settings model rejects a bad schedule with its key path
instead of the API server rejecting the CronJob mid-`pulumi up`.
"""

from __future__ import annotations

DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# (field name, minimum, maximum, names for min..)
_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)


class CronError(ValueError):
    pass


def validate(schedule: str) -> str:
    """Return the schedule if valid; raise CronError naming the bad field."""
    text = schedule.strip()
    if text.startswith("@"):
        if text not in DESCRIPTORS:
            raise CronError(f"unknown descriptor {text!r}; use one of {', '.join(DESCRIPTORS)}")
        return text
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise CronError("set the time zone with `timeZone`, not inside the schedule")
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise CronError(
            f"{schedule!r} has {len(parts)} fields; expected 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"
        )
    for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True):
        for item in part.split(","):
            _check_item(item, name, low, high, names)
    return text


def _check_item(item: str, field: str, low: int, high: int, names: list[str] | None) -> None:
    if not item:
        raise CronError(f"{field}: empty list item")
    body, _, step = item.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise CronError(f"{field}: step {step!r} must be a positive number")
    if body in ("*", "?"):
        return
    start, dash, end = body.partition("-")
    first = _value(start, field, low, high, names)
    if dash:
        last = _value(end, field, low, high, names)
        if last < first:
            raise CronError(f"{field}: range {body!r} runs backwards")
    elif step:
        pass  # "5/15" means from 5 to the maximum in steps of 15


def _value(text: str, field: str, low: int, high: int, names: list[str] | None) -> int:
    if names and text.lower() in names:
        return names.index(text.lower()) + low
    if not text.isdigit():
        raise CronError(
            f"{field}: {text!r} is not a number"
            + (f" or a name ({', '.join(names)})" if names else "")
        )
    value = int(text)
    # Day of week: 7 is Sunday too.
    if not low <= value <= (7 if field == "day of week" else high):
        raise CronError(f"{field}: {value} is outside {low}-{high}")
    return value
