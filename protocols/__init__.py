"""Wire protocols of the gateway: SSH-1 (``ssh1``) and SSH-2 (``ssh2``).

The modules directly in this package are the contracts both protocols share with the
gateway: the session model (:mod:`protocols.session`; its plain value types in
:mod:`protocols.session_values`), the credentials and login flow
(:mod:`protocols.auth`) and the per-connection record (:mod:`protocols.record`).
``ssh1`` and ``ssh2`` never import each other, and nothing here imports ``gateway``.
"""
