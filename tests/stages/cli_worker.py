"""One rank of a multi-process CLI run (launched by the tests with torchrun-style variables).

Usage: python cli_worker.py <prunelight CLI arguments>
"""

from __future__ import annotations

import sys

from prunelight.main import main

if __name__ == "__main__":
    main(sys.argv[1:])
