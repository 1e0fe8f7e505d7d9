"""The README's configuration reference stays the one in gateway.config."""

from pathlib import Path

import gateway.config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_holds_the_config_reference():
    doc = gateway.config.__doc__
    start = doc.index("| key |")
    table = doc[start : doc.index("\n\n", start)]
    assert table in README.read_text(), "paste gateway/config.py's reference table into README.md"


def reference_in(text: str) -> str:
    start = text.index("| key | default | meaning |")
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else len(text)]


def test_readme_reference_is_exactly_the_generated_table():
    # Not one row more or less than the schema writes (a row the schema lost would stay
    # in the README unnoticed by a containment check).
    generated = gateway.config.reference_table()
    assert reference_in(README.read_text()) == generated, (
        "README.md's configuration reference differs from the schema's; replace it with the "
        "output of: .venv/bin/python -c 'from gateway.config import reference_table; "
        "print(reference_table())'"
    )
    assert reference_in(gateway.config.__doc__) == generated


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    assert text.index("scripts/bootstrap && .venv/bin/twistd -n sshgateway") < text.index("scripts/test")
