"""The probe's reports as text (for people), JSON (every field) and CSV (one row a host,
for a spreadsheet inventory): :data:`FORMATS` by ``--format`` name."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from tools.probe.report import HostReport


def format_json(reports: Sequence[HostReport]) -> str:
    return json.dumps([r.to_dict() for r in reports], indent=2) + "\n"


CSV_COLUMNS = (
    "target", "host", "port", "status", "error", "identification", "protocols",
    "ssh1_available", "ssh1_reason", "ssh1_host_key_bits", "ssh1_server_key_bits",
    "ssh1_host_key_md5", "ssh1_host_key_sha256", "ssh1_ciphers", "ssh1_auth", "ssh1_flags",
    "ssh2_available", "ssh2_reason", "ssh2_kex", "ssh2_host_key_algorithms",
    "ssh2_ciphers_c2s", "ssh2_ciphers_s2c", "ssh2_macs_c2s", "ssh2_macs_s2c",
    "ssh2_compression_c2s", "ssh2_compression_s2c", "ssh2_host_keys", "ssh1_login", "ssh1_flow", "ssh2_login", "ssh2_flow", "duration",
)  # fmt: skip


def _csv_row(r: HostReport) -> dict[str, Any]:
    row: dict[str, Any] = {
        "target": r.target, "host": r.host, "port": r.port, "status": r.status,
        "error": r.error or "", "identification": r.identification or "",
        "protocols": " ".join(r.protocols), "duration": r.duration,
        "ssh1_available": _tri(r.ssh1.available), "ssh1_reason": r.ssh1.reason or "",
        "ssh2_available": _tri(r.ssh2.available), "ssh2_reason": r.ssh2.reason or "",
    }  # fmt: skip
    offer = r.ssh1.offer
    if offer is not None:
        row.update(
            ssh1_host_key_bits=offer.host_key_bits,
            ssh1_server_key_bits=offer.server_key_bits,
            ssh1_host_key_md5=offer.host_key_md5,
            ssh1_host_key_sha256=offer.host_key_sha256,
            ssh1_ciphers=" ".join(offer.ciphers),
            ssh1_auth=" ".join(offer.auth),
            ssh1_flags=" ".join(offer.flags),
        )
    k = r.ssh2.kexinit
    if k is not None:
        for name in (
            "kex", "host_key_algorithms", "ciphers_c2s", "ciphers_s2c", "macs_c2s",
            "macs_s2c", "compression_c2s", "compression_s2c",
        ):  # fmt: skip
            row[f"ssh2_{name}"] = " ".join(getattr(k, name))
    for x in r.logins:
        row[f"{x.protocol}_login"] = f"exit {x.exit_status}" if x.ok else f"failed: {x.error}"
        row[f"{x.protocol}_flow"] = x.flow_id or ""
    row["ssh2_host_keys"] = "; ".join(
        f"{h.type} {h.bits} {h.fingerprint}" for h in r.ssh2.host_keys
    )
    return row


def _tri(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def format_csv(reports: Sequence[HostReport]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for r in reports:
        writer.writerow(_csv_row(r))
    return out.getvalue()


def format_text(reports: Sequence[HostReport]) -> str:
    lines: list[str] = []
    for r in reports:
        head = f"{r.host}:{r.port}"
        if r.status != "ok":
            lines.append(f"{head}  {r.status}: {r.error}")
            lines.append("")
            continue
        lines.append(f"{head}  {r.identification}")
        lines.append(f"  protocols: {' '.join(r.protocols) or 'none'}  ({r.duration:.2f}s)")
        offer = r.ssh1.offer
        if offer is not None:
            lines.append(
                f"  SSH-1 host key   {offer.host_key_bits} bits  {offer.host_key_md5}  "
                f"{offer.host_key_sha256}"
            )
            lines.append(f"  SSH-1 server key {offer.server_key_bits} bits")
            lines.append(f"  SSH-1 ciphers    {' '.join(offer.ciphers) or '-'}")
            lines.append(f"  SSH-1 auth       {' '.join(offer.auth) or '-'}")
            lines.append(f"  SSH-1 flags      {' '.join(offer.flags) or '-'}")
            lines.extend(f"  SSH-1 warning    {w}" for w in offer.warnings)
        else:
            lines.append(f"  SSH-1 unavailable: {r.ssh1.reason}")
        k = r.ssh2.kexinit
        if k is not None:
            for label, values in (
                ("kex", k.kex), ("host key algs", k.host_key_algorithms),
                ("ciphers c2s", k.ciphers_c2s), ("ciphers s2c", k.ciphers_s2c),
                ("macs c2s", k.macs_c2s), ("macs s2c", k.macs_s2c),
                ("compress c2s", k.compression_c2s), ("compress s2c", k.compression_s2c),
            ):  # fmt: skip
                lines.append(f"  SSH-2 {label:<14} {','.join(values) or '-'}")
            for h in r.ssh2.host_keys:
                check = "" if h.verified else "  (signature not checked)"
                lines.append(f"  SSH-2 host key   {h.type} {h.bits} {h.fingerprint}{check}")
            lines.extend(f"  SSH-2 key error  {e}" for e in r.ssh2.key_errors)
        else:
            lines.append(f"  SSH-2 unavailable: {r.ssh2.reason}")
        for login_result in r.logins:
            label = "SSH-1" if login_result.protocol == "ssh1" else "SSH-2"
            if login_result.ok:
                outcome = f"logged in, exit status {login_result.exit_status}"
            else:
                outcome = f"failed: {login_result.error}"
            flow = f"  flow {login_result.flow_id}" if login_result.flow_id else ""
            lines.append(f"  {label} login      {outcome}{flow}")
        lines.append("")
    return "\n".join(lines)


FORMATS: dict[str, Callable[[Sequence[HostReport]], str]] = {
    "text": format_text,
    "json": format_json,
    "csv": format_csv,
}
