"""Building HTML and SVG as an ElementTree, serialised by it, so every text and attribute
taken from a record is escaped by construction; no markup is ever assembled from strings.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def _attr_name(name: str) -> str:
    return name.rstrip("_").replace("_", "-")  # font_size -> font-size, class_ -> class


def attr_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}".removesuffix(".0")
    return str(value)


def add(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    """A child element (``font_size=11`` sets ``font-size="11"``)."""
    element = ET.SubElement(parent, tag, {_attr_name(k): attr_value(v) for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element
