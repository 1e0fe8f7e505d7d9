"""SSH protocol 1.5 (and 1.3): a sans-I/O core (no Twisted), a thin Twisted server and a
thin Twisted client (for upstream SSH-1 devices).

Core, one module per concern (none imports Twisted or the gateway):
    wire        byte/uint32/string/SSH-1 mpint, bounded reads, ProtocolError
    crc         SSH-1 CRC-32 (start 0, no final inversion)
    ciphers     registry by name and number: none 0, des 2, 3des 3, blowfish 6
    compression zlib per direction, Z_PARTIAL_FLUSH per packet, bounded inflation
    deattack    CRC-32 compensation attack detector
    packet      binary packet codec (length bounds before buffering, CRC, padding)
    messages    message numbers by protocol name; the state machine's tables per role
                (allowed messages, phase transitions, awaited replies)
    keys        session id, double-RSA session key, RSA challenge, ssh1_fingerprint
    keygen      RSA keys of any SSH-1 size (under 1024 bits, which cryptography no longer makes)
    ttymodes    SSH-1 tty modes <-> SSH-2 numbering
    events      what the core reports
    connection  role-independent state machine (h11-style next_event/data_to_send)
    server_connection  the server role
    client_connection  the client role
    keyfile     the classic SSH-1 RSA private key file (rsa1), unencrypted
    identification  the server's identification line, as a client reads it (banner, bounds)
Twisted:
    pump        CorePump: the event loop, writes and input pauses both protocols share
    server      SSH1ServerFactory (IHandoffFactory) and the protocol
    client      SSH1ClientProtocol: one upstream session for the gateway's SSH-1 target
"""
