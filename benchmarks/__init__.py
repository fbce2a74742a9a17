"""Benchmarks: each file is a script (see its docstring); results go to runs/bench."""
