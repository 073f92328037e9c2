"""Benchmarks of Energy-Kart; each prints one JSON object."""
