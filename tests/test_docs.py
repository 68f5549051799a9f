"""The generated docs (configuration reference, policy rules, outputs schema) are current."""

from tools import config_docs


def test_generated_docs_are_current() -> None:
    assert config_docs.main(["--check"]) == 0, "run `make docs`"


def test_reference_covers_nested_keys() -> None:
    text = config_docs.render()
    for heading in (
        "`mlplatform:cluster.vpc`",
        "`mlplatform:gpuNodeGroups[]`",
        "`mlplatform:teams[].quota`",
        "`mlplatform:devicePlugin.timeSlicing`",
    ):
        assert f"#### {heading}" in text
    assert "| `maxSize` | int | **required** |" in text
    assert '| `natGateways` | `"single"` \\| `"perAz"` | `"perAz"` |' in text
