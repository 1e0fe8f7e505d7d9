"""Session targets: what runs behind a session once a front end has opened it.

A target turns a SessionRequest into a running ISessionTarget (see protocols/session.py).
``local`` (gateway.targets.local.LocalTarget) runs the program on the gateway host; upstream
targets (another SSH server, a serial line) will live beside it with the same interface.
"""
