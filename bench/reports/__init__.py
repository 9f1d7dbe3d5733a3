"""Statistics over seeds and the reports of the loop benchmarks (bench/loop.py, bench/sample_efficiency.py)."""
