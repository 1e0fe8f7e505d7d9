"""SSH-1 test support: the test-only client, in-memory rigs, and the subprocess target driver."""
