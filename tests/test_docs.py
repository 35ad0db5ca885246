"""Generated docs must match the code that generates them."""

import re
from pathlib import Path

from moola.features import feature_table_markdown
from moola.pipelines.train import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_configs_doc_is_current() -> None:
    assert (ROOT / "docs" / "configs.md").read_text() == config_reference(), (
        "docs/configs.md is stale: regenerate with moola.pipelines.train.config_reference()"
    )


def test_every_config_key_has_a_note() -> None:
    """Every row of every table of the config reference (sections included) says what it does."""
    rows = [ln for ln in config_reference().splitlines() if ln.startswith("| `")]
    assert len(rows) > 50
    missing, malformed = [], []
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]  # `\|` inside a type is escaped
        if len(cells) != 4:
            malformed.append(row)
        elif not cells[3]:
            missing.append(cells[0])
    assert not malformed, f"rows that are not key | type | default | note (a '|' in a note?): {malformed}"
    assert not missing, f"config keys without a note (add Field(description=...)): {missing}"


def test_features_doc_is_current() -> None:
    text = (ROOT / "docs" / "features.md").read_text()
    assert feature_table_markdown().strip() in text, (
        "docs/features.md is stale: regenerate with moola.features.feature_table_markdown()"
    )


def test_readme_gives_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("```", 2)[1]
    commands = [ln.split("#")[0].strip() for ln in setup.splitlines()[1:] if ln.strip()]
    assert commands == ["make demo", "make test"]
