"""The gateway's own SSH-1 server as a legacy device with small keys (issue 15): a whole
gateway (GatewayProcess) whose SSH-1 host key and server key are replaced, before twistd
starts, by keys of sizes the gateway itself never uses (a 768-bit host key, a 384-bit
server key). Everything else — protocol, login, sessions — is the gateway's.

``GatewayProcess(..., prelude=prelude(host_path, server_path))`` with PEM files from
:func:`write_key`; give the device's config an ``[ssh1] server_key_bits`` 128 bits away
from the host key's size (its settings still check that, whatever key stands in).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def prelude(host_path: Path, server_path: Path) -> str:
    """The statement that installs the keys in the gateway's process."""
    return f"import tests.support.ssh1.legacy_device as d; d.install({str(host_path)!r}, {str(server_path)!r})"


def install(host_path: str, server_path: str) -> None:  # pragma: no cover - in the device
    import gateway.hostkeys
    from protocols.ssh1.server import SSH1ServerFactory

    def load(path: str) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    host, server = load(host_path), load(server_path)
    # In place of the state directory's RSA-2048 key (whose loader refuses small ones).
    gateway.hostkeys._ssh1_key = lambda path: host
    original = SSH1ServerFactory.__init__

    def with_small_server_key(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["key_generator"] = lambda bits: server
        original(self, *args, **kwargs)

    SSH1ServerFactory.__init__ = with_small_server_key  # type: ignore[method-assign]
