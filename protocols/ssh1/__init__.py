"""SSH protocol 1.5: a sans-I/O core (no Twisted) and thin Twisted wrappers."""
