"""SSH-2 front end on Twisted Conch: transport, user authentication and session glue."""
