# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
`python benchmarks/benchmark_v3.py PHASE [...]`: benchmark v3's command line, kept so that the commands recorded in
docs/RESULTS.md still work. The benchmark is `benchmarks/rollout_reuse.py` (rollout reuse); its raw files stay in
docs/benchmark_v3.
"""

from rollout_reuse import main


if __name__ == "__main__":
    main()
