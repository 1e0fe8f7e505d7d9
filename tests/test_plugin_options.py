"""``twistd sshgateway`` options (twisted/plugins/sshgateway.py): --log-format, --version,
and a config file's error as its own message, not a usage error."""

from __future__ import annotations

import pytest
from twisted.python import usage

from gateway import version_line
from tests.support.gateway_helpers import LOCAL_ACCESS
from twisted.plugins.sshgateway import PluginOptions


def config_file(tmp_path, extra: str = "") -> str:
    path = tmp_path / "gw.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n{extra}\n'
        f'[users.alice]\nauthorized_keys = "{tmp_path / "ak"}"\n{LOCAL_ACCESS}'
    )
    return str(path)


def test_log_format_from_the_command_line_or_the_config(tmp_path):
    options = PluginOptions()
    options.parseOptions(["--config", config_file(tmp_path, 'log_format = "json"')])
    assert options["log-format"] is None and options["gateway_config"].log_format == "json"
    options = PluginOptions()
    options.parseOptions(["--config", config_file(tmp_path), "--log-format", "json"])
    assert options["log-format"] == "json"


def test_unknown_log_format_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--log-format must be one of text, json"):
        PluginOptions().parseOptions(["--config", config_file(tmp_path), "--log-format", "xml"])


def test_config_error_is_its_message_and_status_1(tmp_path):
    with pytest.raises(SystemExit) as stopped:
        PluginOptions().parseOptions(["--config", config_file(tmp_path, 'log_format = "yaml"')])
    assert str(stopped.value).startswith(f"{tmp_path / 'gw.toml'}:2: log_format: must be \"text\" or \"json\"")


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        PluginOptions().parseOptions(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == version_line() + "\n"
