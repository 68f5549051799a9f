"""Wraps the rules of policies/rules/ into Pulumi policies (no PolicyPack here:
constructing one starts the policy server, so only __main__.py does that)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies import rules

_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def config_schema(rule: rules.Rule) -> PolicyConfigSchema | None:
    """The policy config a rule reads (its thresholds), typed from PolicyConfig."""
    if not rule.config_keys:
        return None
    by_key = {rules.PolicyConfig.keys()[key]: key for key in rule.config_keys}
    defaults = rules.PolicyConfig()
    properties: dict[str, dict[str, Any]] = {}
    for f in fields(rules.PolicyConfig):
        key = by_key.get(f.name)
        if key is None:
            continue
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            properties[key] = {
                "type": "array",
                "items": {"type": "string"},
                "default": list(default),
            }
        else:
            properties[key] = {"type": _JSON_TYPES[type(default)], "default": default}
    return PolicyConfigSchema(properties=properties)


def _config(args: ResourceValidationArgs | StackValidationArgs) -> rules.PolicyConfig:
    return rules.PolicyConfig.from_mapping(args.get_config() or {})


def _resource_validator(
    rule: rules.Rule,
) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    check = rule.resource_check
    assert check is not None

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        res = rules.Resource(args.resource_type, args.name, _plain(args.props))
        for message in check(res, _config(args)):
            report(message, None)

    return validate


def _stack_validator(rule: rules.Rule) -> Callable[[StackValidationArgs, ReportViolation], None]:
    check = rule.stack_check
    assert check is not None

    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        resources = []
        urns: dict[int, str] = {}
        for r in args.resources:
            res = rules.Resource(r.resource_type, r.name, _plain(r.props))
            urns[id(res)] = r.urn
            resources.append(res)
        for found, message in check(resources, _config(args)):
            report(message, urns.get(id(found)) if found is not None else None)

    return validate


def _plain(props: Mapping[str, Any]) -> dict[str, Any]:
    """Policy props are read-only proxies; the rules want plain dicts and lists."""

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in props.items()}


def build_policies() -> list[Policy]:
    """One Pulumi policy per rule, with its description, default enforcement,
    severity, remediation and config schema."""
    policies: list[Policy] = []
    for rule in rules.RULES:
        common: dict[str, Any] = {
            "name": rule.name,
            "description": rule.description,
            "enforcement_level": EnforcementLevel(rule.enforcement),
            "config_schema": config_schema(rule),
            "severity": Severity(rule.severity),
            "remediation_steps": rule.remediation,
        }
        if rule.resource_check is not None:
            policies.append(ResourceValidationPolicy(validate=_resource_validator(rule), **common))
        else:
            policies.append(StackValidationPolicy(validate=_stack_validator(rule), **common))
    return policies
