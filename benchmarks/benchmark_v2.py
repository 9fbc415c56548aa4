# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
`python benchmarks/benchmark_v2.py PHASE [...]`: benchmark v2's command line, kept so that the commands recorded in
docs/RESULTS.md and in the run files still work. The benchmark is `benchmarks/algorithms_across_tasks.py` (algorithms
across tasks); its raw files stay in docs/benchmark_v2.
"""

from algorithms_across_tasks import main


if __name__ == "__main__":
    main()
