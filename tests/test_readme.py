"""The README's configuration reference stays the one in gateway.config."""

from pathlib import Path

import gateway.config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_holds_the_config_reference():
    doc = gateway.config.__doc__
    start = doc.index("| key |")
    table = doc[start : doc.index("\n\n", start)]
    assert table in README.read_text(), "paste gateway/config.py's reference table into README.md"


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    assert text.index("scripts/bootstrap && .venv/bin/twistd -n sshgateway") < text.index("scripts/test")
