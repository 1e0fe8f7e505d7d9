"""A real Prometheus server for tests (Debian's ``prometheus``): on a free loopback port,
with its own config and storage in a temporary directory, scraping the given targets'
``/metrics`` every second; and its HTTP API's instant queries, polled with a bound.

``prometheus --help`` (2.42 on Debian 12): ``--config.file``, ``--storage.tsdb.path``,
``--web.listen-address``; it answers ``/-/ready`` about 0.2 s after it starts on this
machine. It cannot say which port it picked for ``:0``, hence a free port found first.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.peers import require_peer
from tests.support.sshd import free_port

SCRAPE_INTERVAL = "1s"


class PrometheusServer:
    """``with PrometheusServer(workdir, ["127.0.0.1:PORT"]) as prometheus:`` -> ``.query``."""

    def __init__(self, workdir: Path, targets: list[str], job: str = "sshgateway") -> None:
        self.workdir = workdir
        self.targets = targets
        self.job = job
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        program = require_peer("prometheus")["prometheus"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            f"  - job_name: {self.job}\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: {json.dumps(self.targets)}\n"
        )
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    program,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not become ready:\n{self.log_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """An HTTP API call's ``data`` (raises on an error answer)."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(self.url(f"{path}?{query}"), timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": {labels}, "value": [t, "v"]}]."""
        return self.api("/api/v1/query", query=expression)["result"]

    def wait_for(
        self,
        expression: str,
        done: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll ``expression`` until ``done(result)``; AssertionError naming what it last
        got, the scrape targets' health and Prometheus's log when time runs out."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expression)
            if done(result):
                return result
            time.sleep(0.25)
        targets = self.api("/api/v1/targets")["activeTargets"]
        health = [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in targets]
        raise AssertionError(
            f"prometheus never answered {expression!r} as expected within {timeout:g} s: "
            f"last result {result}; targets {health}\n{self.log_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
