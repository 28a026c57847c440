"""Moved to `banditspec bench` (the package banditspec/bench/); this script only forwards its arguments.

Use the command itself:

    .venv/bin/banditspec bench --family default            # SmolLM2-135M-Instruct on benchmarks/prompts.json
    .venv/bin/banditspec bench --family pydocs --reduced   # smoke run, under 3 minutes on 2 CPU cores
"""

import sys

from banditspec.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
