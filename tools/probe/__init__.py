"""``sshgateway probe``: what a host offers over SSH-1 and over SSH-2, without logging in.

Per host one SSH-1 attempt (identification, then the server's SSH_SMSG_PUBLIC_KEY, then a
clear-text disconnect) and SSH-2 attempts like ssh-keyscan (Conch's client transport: the
server's KEXINIT lists, and one key exchange per host key type it offers, stopped once the
keys are in place), bounded by one per-host deadline; many hosts under a concurrency limit;
the text / JSON / CSV reports; and, with credentials, one login per protocol found through
the upstream targets' own clients (the host keys just seen pinned), whose connections are
recorded as flow records for ``sshgateway flows compare``.

A probe connection is short and talks to hosts that may be hostile or broken: every line and
list is bounded before it is kept, every failure becomes a reason in the report (never a
traceback), and a host that says nothing is reported when its deadline passes. The wire
parsing is the protocols' own (``protocols.ssh1.client_connection.read_public_key``,
``protocols.ssh2.kexinit``).

Modules, one concern each:

- ``command``   the options and the run from the command line;
- ``targets``   HOST[:PORT] arguments and hosts files;
- ``hosts``     one host's attempts under its deadline, many hosts under a limit;
- ``attempt``   what every probe connection shares, and running one to a deadline;
- ``ssh1``      the SSH-1 attempt and the offer in SSH_SMSG_PUBLIC_KEY;
- ``ssh2``      the SSH-2 attempt (KEXINIT, one host key per exchange);
- ``keys``      host key fingerprints as the report shows them;
- ``login``     the logins with ``--user``, recorded as flows;
- ``report``    the results, as plain data;
- ``output``    text, JSON and CSV;
- ``progress``  the progress bar on a terminal.
"""
