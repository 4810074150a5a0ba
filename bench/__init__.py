"""coframe benchmarks (the performance targets of the issues); run with ``python -m bench.run``.

Benchmarks are never timed tests: they measure, compare against a baseline
run in the same process tree, and write ``bench/RESULTS.md``.
"""

__all__: list[str] = []
