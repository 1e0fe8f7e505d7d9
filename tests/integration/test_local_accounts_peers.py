"""Issue 11, access: a gateway started as root runs ``local`` sessions as the user's
``os_user``, with sshd's environment, and grants ``local`` to nobody by default — checked
with OpenSSH's ssh and PuTTY's plink (SSH-1 and SSH-2) against a real gateway process.

The test account ``gwtest`` is created here (useradd; reused if it exists, removed
afterwards only if this module created it). Not run as root, the module is skipped with
the reason; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

from tests.support.clients import (
    base_config,
    hash_password,
    plink1_argv,
    plink2_argv,
    ssh_argv,
    sshgateway_cli,
)
from tests.support.gateway_process import GatewayProcess, render_toml
from tests.support.peers import in_ci, require_peer

pytestmark = pytest.mark.peer

ACCOUNT = "gwtest"
# One line per fact, so that a missing variable shows as an empty field, not a shifted one.
REPORT = (
    'id -un; id -G; pwd; echo "C=$SSH_CONNECTION"; echo "L=$SSH_CLIENT"; '
    'echo "U=$USER $LOGNAME $HOME $SHELL $MAIL"; echo "T=${SSH_TTY-unset}"; echo "P=$PATH"'
)


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "starting local sessions as another account needs the gateway to run as root"
    if in_ci():
        pytest.fail(message + " (CI=true: not running as root is a failure)")
    pytest.skip(message + "; run the tests as root")


@pytest.fixture(scope="module")
def account():
    """The ``gwtest`` account (home, login shell, one supplementary group)."""
    require_root()
    require_peer("useradd", "userdel")
    created = False
    try:
        entry = pwd.getpwnam(ACCOUNT)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", "--groups", "users",
             "--comment", "sshgateway tests", ACCOUNT],
            capture_output=True, text=True,
        )  # fmt: skip
        created = made.returncode == 0
        # Another test run may have made it meanwhile: then it is theirs to remove.
        entry = pwd.getpwnam(ACCOUNT)
    yield entry
    if created:
        subprocess.run(["userdel", "--remove", ACCOUNT], capture_output=True)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, account, authorized_keys):
    config = base_config(hash_password(), authorized_keys)
    config["users"]["alice"].update(targets=["local"], os_user=ACCOUNT)
    # Bob may reach one device (never contacted here) and not local.
    config["users"]["bob"] = {"password": hash_password(), "targets": ["dev"]}
    config["targets"] = {"dev": {"protocol": "ssh2", "host": "127.0.0.1", "port": 9}}
    with GatewayProcess(tmp_path_factory.mktemp("local-accounts"), config) as gw:
        yield gw


def report(text: str) -> dict[str, str]:
    lines = text.replace("\r\n", "\n").splitlines()
    facts = {"name": lines[0], "groups": lines[1], "cwd": lines[2]}
    facts.update(line.split("=", 1) for line in lines[3:] if "=" in line[:2])
    return facts


def home_or_root(account: pwd.struct_passwd) -> str:
    """Where a session starts: the home directory, or "/" when it is missing (as sshd)."""
    return account.pw_dir if os.path.isdir(account.pw_dir) else "/"


def expected_identity(account: pwd.struct_passwd) -> dict[str, str]:
    groups = sorted(set(os.getgrouplist(account.pw_name, account.pw_gid)))
    return {
        "name": ACCOUNT,
        "groups": " ".join(map(str, groups)),
        "cwd": home_or_root(account),
        "U": f"{ACCOUNT} {ACCOUNT} {account.pw_dir} {account.pw_shell} /var/mail/{ACCOUNT}",
        "P": "/usr/local/bin:/usr/bin:/bin:/usr/games",
    }


def test_openssh_command_runs_as_the_os_user_with_sshds_environment(gateway, account, client_keys):
    # Bound to 127.0.0.2: the addresses the program sees are the connection's, not defaults.
    result = subprocess.run(
        ssh_argv(gateway, client_keys["ed25519"], "-b", "127.0.0.2", REPORT),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gateway.log_text()[-3000:]
    facts = report(result.stdout)
    facts["groups"] = " ".join(sorted(facts["groups"].split(), key=int))
    for fact, expected in expected_identity(account).items():
        assert facts[fact] == expected, (fact, facts)
    client_host, port, server_host, server_port = facts["C"].split()
    assert (client_host, server_host, int(server_port)) == ("127.0.0.2", "127.0.0.1", gateway.port)
    assert facts["L"] == f"127.0.0.2 {port} {gateway.port}"
    gateway.wait_for_log(rf"connection closed: peer=127\.0\.0\.2:{port}\b")
    assert facts["T"] == "unset"  # no pty, no SSH_TTY


def test_openssh_with_a_pty_gets_ssh_tty_owned_by_the_account(gateway, account, client_keys):
    result = subprocess.run(
        ssh_argv(gateway, client_keys["ed25519"], "-tt",
                 'tty; echo "T=$SSH_TTY"; stat -c %U:%G:%a "$(tty)"; id -un'),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + gateway.log_text()[-3000:]
    tty, ssh_tty, owner, name = result.stdout.replace("\r\n", "\n").splitlines()[:4]
    assert tty.startswith("/dev/pts/") and ssh_tty == f"T={tty}"
    assert owner == f"{ACCOUNT}:tty:620" and name == ACCOUNT


def test_plink_ssh1_runs_as_the_os_user_with_the_connections_addresses(gateway, account):
    result = subprocess.run(plink1_argv(gateway, REPORT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + gateway.log_text()[-3000:]
    facts = report(result.stdout)
    assert facts["name"] == ACCOUNT and facts["cwd"] == home_or_root(account)
    assert facts["U"] == expected_identity(account)["U"]
    client_host, port, server_host, server_port = facts["C"].split()
    assert (client_host, server_host, int(server_port)) == ("127.0.0.1", "127.0.0.1", gateway.port)
    assert facts["L"] == f"127.0.0.1 {port} {gateway.port}"
    gateway.wait_for_log(rf"connection closed: peer=127\.0\.0\.1:{port}\b")


def test_plink_ssh2_password_login_runs_as_the_os_user(gateway, account):
    result = subprocess.run(plink2_argv(gateway, REPORT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + gateway.log_text()[-3000:]
    facts = report(result.stdout)
    assert facts["name"] == ACCOUNT and facts["C"].startswith("127.0.0.1 ")


@pytest.mark.parametrize("login", ["bob+local", "bob"])
@pytest.mark.parametrize("client", ["plink -1", "plink -2"])
def test_a_user_whose_targets_do_not_name_local_cannot_reach_it(gateway, login, client):
    argv = (plink1_argv if client == "plink -1" else plink2_argv)(gateway, "id", user=login)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 255, result.stdout + result.stderr
    assert "uid=" not in result.stdout
    if login == "bob+local":
        assert "target 'local' is not available to bob" in result.stderr
    else:  # his only target, a device that is not there
        assert "sshgateway: dev:" in result.stderr


def test_a_password_only_user_with_no_targets_is_a_config_error(tmp_path, account):
    path = tmp_path / "gw.toml"
    path.write_text(
        render_toml(
            {"state_dir": str(tmp_path / "state"), "users": {"eve": {"password": hash_password()}}}
        )
    )
    checked = sshgateway_cli("check-config", str(path), check=False)
    assert checked.returncode == 1
    assert "users.eve: has no targets: nothing is granted by default" in checked.stdout
    # Nor does a gateway start on it.
    gw = GatewayProcess(tmp_path, {"users": {"eve": {"password": hash_password()}}})
    with pytest.raises(RuntimeError, match="users.eve: has no targets"):
        gw.start(timeout=30)


def test_local_without_os_user_and_an_unknown_account_are_config_errors(tmp_path, account):
    path = tmp_path / "gw.toml"
    users = {
        "eve": {"password": hash_password(), "targets": ["local"]},
        "fay": {"password": hash_password(), "targets": ["local"], "os_user": "no-such-acct"},
    }
    path.write_text(render_toml({"state_dir": str(tmp_path / "state"), "users": users}))
    checked = sshgateway_cli("check-config", str(path), check=False)
    assert checked.returncode == 1
    assert 'users.eve.targets: "local" needs os_user' in checked.stdout
    assert "users.fay.os_user: no OS account named 'no-such-acct'" in checked.stdout


def test_the_account_of_a_session_is_logged(gateway, client_keys):
    subprocess.run(
        ssh_argv(gateway, client_keys["ed25519"], "true"), capture_output=True, timeout=60
    )
    gateway.wait_for_log(rf"local session for alice: pid \d+ as {ACCOUNT}, command")
