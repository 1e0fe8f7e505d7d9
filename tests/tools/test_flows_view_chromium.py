"""``flows compare --format html`` renders in a real browser: headless Chromium lays the
page out on a 1400x1000 window (where the diagram is, measured by a script in a copy of the
page and read back with --dump-dom) and takes a screenshot, which is decoded here (zlib and
the PNG row filters, no imaging library) and must show text and the SVG arrows in both
directions' colours on the first screen, not a blank page."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib

import pytest

from tests.support.flow_records import run, ssh1_plink_login, ssh2_openssh_login, write_records
from tests.support.peers import require_peer

pytestmark = pytest.mark.peer

C2S_BLUE = (0x1F, 0x5F, 0xBF)
S2C_GREEN = (0x1D, 0x7A, 0x3A)


def decode_png(data: bytes) -> tuple[int, int, list[bytes], int]:
    """Width, height, unfiltered rows and bytes per pixel of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def pixels(rows: list[bytes], bpp: int):
    """Every other pixel of every other row: plenty for "not blank", and 4 times faster."""
    for y in range(0, len(rows), 2):
        row = rows[y]
        for x in range(0, len(row), 2 * bpp):
            yield y, (row[x], row[x + 1], row[x + 2])


def near(colour: tuple[int, ...], wanted: tuple[int, int, int], slack: int = 12) -> bool:
    return all(abs(a - b) <= slack for a, b in zip(colour, wanted, strict=True))


SCREEN = (1400, 1000)


def chromium_run(chromium: str, workdir, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a SCREEN-sized window (its own profile under ``workdir``)."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={SCREEN[0]},{SCREEN[1]}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
    )


# Run in a copy of the page (the page itself has no scripts): where the browser laid out
# the diagram, written into the DOM that --dump-dom prints.
MEASURE = """<script>
window.addEventListener("load", () => {
  const box = document.querySelector("svg").getBoundingClientRect();
  const root = document.documentElement;
  root.dataset.diagram = [box.top, box.left, box.width, box.height, root.scrollWidth]
    .map(Math.round).join(",");
});
</script>"""


def test_compare_html_renders_in_headless_chromium(tmp_path):
    """The page as a person first sees it, on a 1400x1000 screen: the sequence diagram
    (the point of the page) starts near the top, fits the width, and its arrows in both
    directions' colours are on that first screen (issue 9, item 14)."""
    chromium = require_peer("chromium")["chromium"]
    write_records(tmp_path, ssh1_plink_login(), ssh2_openssh_login())
    page = tmp_path / "compare.html"
    status, _, err = run(
        "compare",
        "f-20261121T140501Z",
        "f-20261121T140502Z",
        "--state-dir",
        str(tmp_path),
        "--format",
        "html",
        "-o",
        str(page),
    )
    assert status == 0, err

    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium_run(chromium, tmp_path, "--dump-dom", measured.as_uri())
    found = re.search(r'data-diagram="(-?\d+),(-?\d+),(\d+),(\d+),(\d+)"', dom.stdout)
    assert found, f"no layout measured (status {dom.returncode}): {dom.stderr[-2000:]}"
    top, left, width, height, scroll_width = map(int, found.groups())
    assert 0 <= top <= 200, f"the diagram starts {top} px down"
    assert 0 <= left and left + width <= SCREEN[0] and scroll_width <= SCREEN[0]
    assert height > 400

    shot = tmp_path / "shot.png"
    result = chromium_run(chromium, tmp_path, f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), f"no screenshot (status {result.returncode}): {result.stderr[-2000:]}"
    width, height, rows, bpp = decode_png(shot.read_bytes())
    assert (width, height) == SCREEN
    colours: set[tuple[int, ...]] = set()
    ink = 0
    blue_rows: set[int] = set()
    green_rows: set[int] = set()
    for y, colour in pixels(rows, bpp):
        if len(colours) < 5000:
            colours.add(colour)
        if sum(colour) < 600:
            ink += 1
        if near(colour, C2S_BLUE):
            blue_rows.add(y)
        elif near(colour, S2C_GREEN):
            green_rows.add(y)
    assert len(colours) > 100, "the page looks blank"
    assert ink > width * height // 400, "hardly anything drawn"
    # The sequence diagram's arrows, on the first screen: many rows carry c2s blue and s2c
    # green, the first of them within the top third.
    assert len(blue_rows) > 15 and len(green_rows) > 15, (len(blue_rows), len(green_rows))
    assert min(blue_rows | green_rows) < SCREEN[1] // 3, min(blue_rows | green_rows)
