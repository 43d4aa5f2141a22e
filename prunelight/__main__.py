"""``python -m prunelight <subcommand> ...``: the same program as ``prunelight``."""

from prunelight.main import main

main()
