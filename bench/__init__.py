"""coframe benchmarks (DESIGN.md "Performance targets"); run with ``python -m bench.run``.

Benchmarks are never timed tests: they measure, compare against a baseline
run in the same process tree, and write ``bench/RESULTS.md``.
"""

__all__: list[str] = []
