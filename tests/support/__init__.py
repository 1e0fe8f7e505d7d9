"""Test support: doubles, rigs, real-peer drivers and helpers the tests share (no tests here)."""
