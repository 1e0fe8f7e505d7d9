"""SSH-2 front end on Twisted Conch: transport, user authentication and session glue.

Modules, one concern each:

- ``factory``    SSH2ServerFactory, the IHandoffFactory the dispatcher calls;
- ``transport``  SSH2ServerTransport: Conch's server transport after a handoff, offering
                 only the configured algorithms, with a bounded packet reader/writer;
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
- ``settings``   SSH2Settings, the algorithm and channel policy.
"""
