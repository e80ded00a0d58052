"""The parts of benchmarks/gpu_check.py, one module per part (or pair of parts)."""
