"""sshgateway: the gateway proper — configuration, authentication, targets, service wiring.

Depends on ``protocols`` (the wire implementations); nothing in ``protocols`` imports this.
"""

__version__ = "0.1.0"
