"""prunelight's command line: ``python train.py <subcommand> --config configs/X.yaml [--key value ...]``.

Subcommands: fit, validate, test, predict (Lightning's), evaluate. ``--print_config`` shows the full
configuration; ``prunelight`` (the console script) is the same program.
"""

from prunelight.main import main

if __name__ == "__main__":
    main()
