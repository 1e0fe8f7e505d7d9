"""What to probe: ``HOST[:PORT]`` arguments and ``--hosts-file`` inventories."""

from __future__ import annotations

DEFAULT_PORT = 22
MAX_TARGETS_FILE = 4 * 1024 * 1024


def parse_target(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(text, port_text)
    if not host or any(c.isspace() for c in host) or len(host) > 255:
        raise ValueError(f"{text!r}: not a host name or address")
    return host, port


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1..65535")
    return int(port_text)


def read_targets(path: str) -> list[str]:
    """The targets in a hosts file: one a line, ``#`` starts a comment; bounded in size."""
    with open(path, encoding="utf-8") as f:
        text = f.read(MAX_TARGETS_FILE + 1)
    if len(text) > MAX_TARGETS_FILE:
        raise ValueError(f"{path}: larger than {MAX_TARGETS_FILE} bytes")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out
