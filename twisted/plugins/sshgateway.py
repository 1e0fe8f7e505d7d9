"""twistd plugin: ``twistd sshgateway [--config FILE] [--log-format text|json] [--version]``.

Kept minimal so that plugin discovery (which imports every plugin) stays cheap; the
gateway is built by ``gateway.service`` only when this plugin is chosen. The options that
only matter to twistd (the version, the log format) live here.
"""

import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from gateway.service import Options


class PluginOptions(Options):
    """``twistd sshgateway``'s options: the gateway's, plus ``--version`` and
    ``--log-format``."""

    synopsis = "[--config FILE] [--log-format text|json]"
    optParameters = Options.optParameters + [
        ["log-format", None, None,
         "text or json (one JSON object per line); overrides log_format in the config."],
    ]  # fmt: skip

    def opt_version(self) -> None:
        """Print the gateway's version and exit."""
        from gateway import version_line

        print(version_line())
        sys.exit(0)

    def postOptions(self) -> None:
        from gateway.config import LOG_FORMATS

        if self["log-format"] not in (None, *LOG_FORMATS):
            raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        try:
            super().postOptions()
        except usage.UsageError as e:
            # A config file's error is the operator's to fix, not a matter of usage: its
            # message (file:line, the line) without twistd's usage text, and status 1.
            if self["config"] is None:
                raise
            raise SystemExit(str(e)) from None


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "sshgateway"
    description = "Dual-stack SSH gateway: SSH-1 and SSH-2 to local and upstream targets."
    options = PluginOptions

    def makeService(self, options: PluginOptions):
        from gateway.service import make_service

        config = options["gateway_config"]
        # twistd's own --uid/--gid: it switches to them after privilegedStartService, and
        # the gateway prepares the state directory and the spawner for that account.
        twistd = getattr(options, "parent", None) or {}
        top = make_service(config, uid=twistd.get("uid"), gid=twistd.get("gid"))
        log_format = options["log-format"] or getattr(config, "log_format", "text")
        if log_format == "json":
            from gateway.logformat import json_logging

            # twistd picks its log observer after makeService: the service hands it over.
            return json_logging(top, options.parent)
        return top


serviceMaker = GatewayServiceMaker()
