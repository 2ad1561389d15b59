"""Faults and bad input: crashes, killed connections, blocking transactions, fuzzed legacy data."""
