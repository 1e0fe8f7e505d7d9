"""SSH-1's packet checksum: CRC-32 (poly 0xEDB88320) started at 0, no final inversion.

zlib's crc32 pre- and post-inverts; starting it from 0xFFFFFFFF and inverting its result
cancels both, which gives SSH-1's variant at C speed.
"""

from __future__ import annotations

import zlib


def ssh1_crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 as SSH-1 defines it; ``crc`` continues a previous value."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
