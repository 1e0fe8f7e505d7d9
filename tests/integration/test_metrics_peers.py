"""The metrics endpoint of a real gateway, scraped by a real Prometheus (issue 13,
acceptance 4): the gateway serves ``/metrics`` on ``[metrics] listen`` in the Prometheus
text format; a Prometheus (Debian's ``prometheus``) on loopback scrapes it every second;
real clients log in (OpenSSH ``ssh`` with a key over SSH-2, a wrong password through
``sshpass``, PuTTY ``plink -1`` with a password over SSH-1); Prometheus's HTTP API then
returns ``sshgateway_logins_total`` with one series per protocol, method and result and
the right counts."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import keyed_config, openssh_argv, plink1_argv, ssh_argv
from tests.support.gateway_process import GatewayProcess
from tests.support.peers import require_peer
from tests.support.prometheus import PrometheusServer

pytestmark = pytest.mark.peer

METRICS_LINE = r"metrics served on http://127\.0\.0\.1:(\d+)/metrics"


def run(argv: list[str], status: int, gw: GatewayProcess) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == status, (argv, result.stderr, gw.log_text()[-3000:])


def logins(result: list[dict]) -> dict[tuple[str, str, str], float]:
    return {
        (r["metric"]["protocol"], r["metric"]["method"], r["metric"]["result"]): float(r["value"][1])
        for r in result
    }


def test_a_real_prometheus_scrapes_the_gateway_and_returns_the_login_counter(tmp_path):
    sshpass = require_peer("sshpass", "ssh", "plink", "prometheus")["sshpass"]
    config, key = keyed_config(tmp_path, metrics={"listen": "tcp:0:interface=127.0.0.1"})
    with GatewayProcess(tmp_path, config) as gw:
        port = int(gw.wait_for_log(METRICS_LINE).group(1))
        endpoint = f"127.0.0.1:{port}"

        # The endpoint itself: the text format, and nothing but /metrics.
        with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            families = {f.name for f in text_string_to_metric_families(answer.read().decode())}
        assert {"sshgateway_connections", "sshgateway_logins", "sshgateway_sessions_active",
                "sshgateway_handshake_seconds"} <= families  # fmt: skip
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://{endpoint}/", timeout=10)

        with PrometheusServer(tmp_path / "prometheus", [endpoint]) as prometheus:
            run(ssh_argv(gw, key, "true"), 0, gw)
            run(ssh_argv(gw, key, "true"), 0, gw)
            wrong = openssh_argv("ssh", gw, None, batch=False) + [
                "-o", "PreferredAuthentications=password",
                "-o", "NumberOfPasswordPrompts=1",
                "alice@127.0.0.1", "true",
            ]  # fmt: skip
            run([sshpass, "-p", "not the password", *wrong], 255, gw)  # ssh: permission denied
            run(plink1_argv(gw, "true"), 0, gw)

            expected = {
                ("ssh2", "publickey", "success"): 2.0,
                ("ssh2", "password", "failure"): 1.0,
                ("ssh1", "password", "success"): 1.0,
            }
            result = prometheus.wait_for(
                "sshgateway_logins_total", lambda result: logins(result) == expected
            )
            assert {r["metric"]["job"] for r in result} == {"sshgateway"}
            # The connections, counted as they closed: three logged in, one refused.
            closed = prometheus.wait_for(
                'sum by (result) (sshgateway_connections_total{protocol=~"ssh1|ssh2"})',
                lambda r: {x["metric"]["result"]: x["value"][1] for x in r}
                == {"success": "3", "failure": "1"},
            )
            assert closed
