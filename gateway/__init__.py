"""sshgateway: the gateway proper — configuration, authentication, targets, service wiring.

Depends on ``protocols`` (the wire implementations); nothing in ``protocols`` imports this.

The version has one home, ``pyproject.toml``; here it is read from the installed package's
metadata (``scripts/bootstrap`` installs this checkout, editable). It names the gateway in
its SSH identification line and in ``sshgateway --version`` / ``twistd sshgateway
--version``.
"""

from importlib import metadata

try:
    __version__ = metadata.version("sshgateway")
except metadata.PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"


def version_line() -> str:
    """What ``--version`` prints: ``sshgateway 0.1.0``."""
    return f"sshgateway {__version__}"
