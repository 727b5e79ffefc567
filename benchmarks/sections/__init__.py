"""The sections of benchmarks/bench.py, one module per family of measurements; bench.py runs them."""
