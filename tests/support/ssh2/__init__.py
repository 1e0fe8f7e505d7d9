"""SSH-2 test support: the in-memory harness, a real-socket front end, KEXINIT bodies."""
