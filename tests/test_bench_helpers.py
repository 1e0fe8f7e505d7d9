"""The benchmarks' pure helpers: CPU accounting from /proc (bench.cpu), the login account
with no shell start-up files (bench.account), the reference sshd's config and the one
command that runs them all. The benchmarks themselves are never run by the test suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import __main__ as run_all
from bench.account import shadow_password_locked, startup_files
from bench.cpu import (
    CLOCK_TICKS,
    GIB,
    CpuMeter,
    ProcTimes,
    parse_stat,
    per_gib,
    per_login_ms,
    ratio,
    reaping,
    tree,
    tree_ticks,
)
from bench.harness import gateway_config, profiling_prelude, sshd_config_text


def stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice ...
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 "
            f"{utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000000 200 " + "0 " * 30)


def test_parse_stat_counts_fields_after_the_last_parenthesis():
    times = parse_stat(stat_line(42, "sshd: a) (b 7", 7, 11, 13, 17, 19))
    assert times == ProcTimes(pid=42, ppid=7, own=24, reaped=36)


def fake_proc(root: Path, processes: list[tuple[int, int, int, int, int, int]]) -> Path:
    for entry in root.iterdir():
        (entry / "stat").unlink()
        entry.rmdir()
    for pid, ppid, utime, stime, cutime, cstime in processes:
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(stat_line(pid, "x", ppid, utime, stime, cutime, cstime))
    return root


def test_tree_sums_living_descendants_and_what_they_reaped(tmp_path):
    from bench.cpu import read_processes

    proc = fake_proc(tmp_path, [
        (10, 1, 5, 1, 100, 0),  # the server: reaped children worth 100 ticks
        (11, 10, 3, 0, 0, 7),  # a connection, which reaped a command
        (12, 11, 2, 2, 0, 0),  # its running command
        (20, 1, 999, 0, 0, 0),  # someone else
    ])
    (proc / "self").mkdir()  # not a pid: skipped
    table = read_processes(proc)
    assert tree(table, [10]) == {10, 11, 12}
    assert tree(table, [99]) == set()
    assert tree_ticks(table, [10]) == 6 + 100 + 3 + 7 + 4


def test_meter_counts_a_child_reaped_meanwhile_once(tmp_path):
    proc = fake_proc(tmp_path, [(10, 1, 50, 0, 0, 0), (11, 10, 30, 0, 0, 0)])
    with CpuMeter(10, proc=proc, settle=0) as cpu:
        # The child runs 20 more ticks, exits and is reaped: its 50 ticks move to the
        # parent's cutime, the parent itself runs 5 more.
        fake_proc(tmp_path, [(10, 1, 55, 0, 50, 0)])
    assert cpu.settled
    assert cpu.seconds == 25 / CLOCK_TICKS


def test_meter_waits_for_new_processes_to_be_reaped(tmp_path):
    proc = fake_proc(tmp_path, [(10, 1, 50, 0, 0, 0)])
    with CpuMeter(10, proc=proc, settle=0) as cpu:
        fake_proc(tmp_path, [(10, 1, 50, 0, 0, 0), (11, 10, 30, 0, 0, 0)])
    assert not cpu.settled  # the reading came before the new process was reaped


# A server that, like sshd's listener, reaps a per-connection process which leaves its
# worker behind (sshd's privilege-separation monitor exits without waiting for the
# session process). The worker burns 0.3 s of CPU.
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
MIDDLE = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {BURN!r}])"
SERVER = f"""
import subprocess, sys
print('ready', flush=True)
sys.stdin.readline()
subprocess.run([sys.executable, '-c', {MIDDLE!r}])
print('served', flush=True)
sys.stdin.readline()
"""


def test_reaping_keeps_an_orphaned_workers_cpu_time_in_the_tree():
    server = subprocess.Popen(
        reaping([sys.executable, "-c", SERVER]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline() == "ready\n"
        with CpuMeter(server.pid, settle=10) as cpu:
            server.stdin.write("go\n")
            server.stdin.flush()
            assert server.stdout.readline() == "served\n"
        assert cpu.settled
        assert cpu.seconds >= 0.28
    finally:
        server.stdin.close()
        assert server.wait(10) == 0


def test_per_unit_figures():
    assert per_gib(2.0, GIB // 2) == 4.0
    assert per_login_ms(0.5, 100) == 5.0
    assert ratio(3.0, 2.0) == 1.5
    for nan in (per_gib(1.0, 0), per_login_ms(1.0, 0), ratio(1.0, 0.0), ratio(1.0, float("nan"))):
        assert nan != nan


def test_startup_files_are_found_in_the_home_and_the_system(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    sshrc = tmp_path / "sshrc"
    assert startup_files(home, sshrc) == []
    (home / ".bashrc").write_text("eval \"$(pyenv init -)\"\n")
    (home / ".ssh" / "rc").write_text("")
    sshrc.write_text("")
    assert startup_files(home, sshrc) == [home / ".bashrc", home / ".ssh" / "rc", sshrc]


def test_a_locked_password_is_recognised():
    shadow = "root:$6$x:19000::::::\nsshgw-bench:!:20000::::::\nother:*:20000::::::\n"
    assert shadow_password_locked(shadow, "sshgw-bench")
    assert not shadow_password_locked(shadow, "other")
    assert not shadow_password_locked(shadow, "missing")


def test_reference_sshd_never_logs_in_root_nor_runs_rc_files(tmp_path):
    text = sshd_config_text(2222, tmp_path / "hk", tmp_path / "ak", "aes128-ctr",
                            "hmac-sha2-256", "curve25519-sha256")
    lines = set(text.splitlines())
    assert {"PermitRootLogin no", "UseDNS no", "PermitUserRC no", "Ciphers aes128-ctr"} <= lines


def test_gateway_login_name_is_the_accounts():
    config = gateway_config("sshgw-bench", Path("/k"), "aes128-ctr", "hmac-sha2-256", "x")
    assert config["users"] == {
        "sshgw-bench": {"authorized_keys": "/k", "targets": ["local"], "os_user": "sshgw-bench"}
    }


def test_gateway_config_adds_targets_to_the_users_list():
    device = {"protocol": "ssh2", "host": "127.0.0.1", "port": 22}
    config = gateway_config("u", Path("/k"), "aes128-ctr", "hmac-sha2-256", "x",
                            targets={"sshd": device})
    assert config["users"]["u"]["targets"] == ["local", "sshd"]
    assert config["targets"] == {"sshd": device}


def test_profiling_prelude_writes_the_main_threads_cpu_profile_at_exit(tmp_path):
    import pstats

    stats = tmp_path / "gw.prof"
    program = profiling_prelude(stats) + "def busy():\n    return sum(range(200000))\nbusy()\n"
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
    names = {func[2] for func in pstats.Stats(str(stats)).stats}
    assert "busy" in names


def test_one_command_runs_every_benchmark():
    bench = Path(run_all.__file__).parent
    benchmarks = {
        f"bench.{path.stem}" for path in bench.glob("*.py")
        if "def main(" in path.read_text() and path.stem != "__main__"
    }
    assert set(run_all.BENCHMARKS) == benchmarks
    assert [argv[2] for argv in run_all.commands(quick=False)] == list(run_all.BENCHMARKS)


def test_ssh1_bench_knows_who_enciphers_and_costs_each_cipher():
    from bench import ssh1
    from protocols.ssh1 import ciphers

    assert set(ssh1.CIPHERS) == {"des", "3des", "blowfish"}
    # The front decrypts what the user uploads; its client encrypts it.
    assert not ssh1.gateway_encrypts("front", "upload")
    assert ssh1.gateway_encrypts("front", "download")
    assert ssh1.gateway_encrypts("client", "upload")
    assert not ssh1.gateway_encrypts("client", "download")
    cost = ssh1.cipher_cost(ciphers.cryptography_stream("blowfish", bytes(32), True), seconds=0.01)
    assert 0 < cost < 1000
