"""Issue 9: the processes of a ``local`` session never outlive their session, end to end.

A real gateway process and a real OpenSSH client (no terminal) run a command that leaves
grandchildren in the background, one of which ignores the hang-up; then the client is
killed, or the gateway is. Neither way may leave a process of the session behind.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.support.clients import keyed_config
from tests.support.gateway_process import GatewayProcess
from tests.support.session_processes import cleanup, start_session, wait_gone

pytestmark = pytest.mark.peer


def test_killed_gateway_leaves_no_session_process(tmp_path):
    config, key = keyed_config(tmp_path)
    with GatewayProcess(tmp_path, config) as gw:
        client, pids = start_session(gw, key)
        try:
            os.kill(gw.pid, signal.SIGKILL)
            gw.process.wait(10)
            assert wait_gone(pids, timeout=10) == [], gw.log_text()[-3000:]
        finally:
            cleanup(client, pids)


def test_lost_client_leaves_no_session_process(tmp_path):
    config, key = keyed_config(tmp_path)
    with GatewayProcess(tmp_path, config) as gw:
        client, pids = start_session(gw, key)
        try:
            client.kill()  # the connection drops without a word
            client.wait(10)
            assert wait_gone(pids, timeout=10) == [], gw.log_text()[-3000:]
            assert gw.process.poll() is None
        finally:
            cleanup(client, pids)
