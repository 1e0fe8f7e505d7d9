"""twistd plugin: ``twistd sshgateway [--config FILE]``.

Kept minimal so that plugin discovery (which imports every plugin) stays cheap; the
gateway is built by ``gateway.service`` only when this plugin is chosen.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.service import Options


@implementer(IServiceMaker, IPlugin)
class GatewayServiceMaker:
    tapname = "sshgateway"
    description = "Dual-stack SSH gateway: SSH-1 and SSH-2 to local and upstream targets."
    options = Options

    def makeService(self, options: Options):
        from gateway.service import make_service

        # twistd's own --uid/--gid: it switches to them after privilegedStartService, and
        # the gateway prepares the state directory and the spawner for that account.
        twistd = getattr(options, "parent", None) or {}
        return make_service(options["gateway_config"], uid=twistd.get("uid"), gid=twistd.get("gid"))


serviceMaker = GatewayServiceMaker()
