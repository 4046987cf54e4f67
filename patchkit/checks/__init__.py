"""Checks that judge an edit: loop regressions (loops.py) and benchmark drift (bench.py)."""
