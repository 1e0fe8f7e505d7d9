"""SSH-2 on Twisted Conch: the gateway's server (transport, user authentication and session
glue) and its client towards devices.

Modules, one concern each:

- ``factory``    SSH2ServerFactory, the IHandoffFactory the dispatcher calls;
- ``algorithms`` the registry of every algorithm name: roles, legacy flags, defaults;
- ``transport_base`` SSH2TransportBase: framing, sending, flow names and ephemeral DH
                 for both roles; with the client, the only user of Conch's private API;
- ``transport``  SSH2ServerTransport: Conch's server transport after a handoff, offering
                 only the configured algorithms, with a bounded packet reader/writer;
- ``client``     SSH2ClientTransport and connect(): one session on a device, for a caller
                 that gives plain options (``client_state``: options, SSH2ClientError,
                 the attempt's state); ``client_auth`` its user auth, ``client_channel``
                 its connection service and session channel;
- ``cipher``     packet protection by name: chacha20-poly1305, AES-GCM, encrypt-then-MAC
                 and the classic modes (Sealer / Opener), for both roles;
- ``strict_kex`` StrictKexTransport: the Terrapin countermeasure, for both roles;
- ``rekey``      RekeyingTransport: key exchanges of our own after so many bytes or seconds;
- ``moduli``     DH groups for group exchange (/etc/ssh/moduli or RFC 3526);
- ``auth``       SSH2UserAuthServer: ssh-userauth on the shared LoginFlow;
- ``connection`` GatewayConnection (ssh-connection) and the Conch-side avatar;
- ``session``    SessionChannel: the "session" channel glued to protocols.session;
- ``wire``       strict reading of SSH-2 wire fields;
- ``kexinit``    a peer's KEXINIT read as data (name-lists bounded), for the probe;
- ``settings``   SSH2Settings, the server's algorithm and channel policy.
"""
