"""Simulated devices: a generated camera scene and sensor signals (demo, tests)."""
