#!/usr/bin/env python3
"""The benchmark driver; run it through benchmarks/run.sh, which installs dependencies and builds Cutover first."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.main import main  # noqa: E402

if __name__ == "__main__":
    main()
