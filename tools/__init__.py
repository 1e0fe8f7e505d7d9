"""The commands an operator runs: ``sshgateway`` (:mod:`tools.cli`) and its ``probe``
(:mod:`tools.probe`) and ``flows`` (:mod:`tools.flows`) subcommands.

Tools sit above the runtime: they import ``gateway`` and ``protocols``, and nothing in
``gateway``, ``protocols`` or ``twisted/plugins`` imports them (``tests/test_layering.py``).
"""
