"""Fuzz ``egressd check-config`` with mutated configs and print the figures.

    PYTHONPATH=$PWD python chaos/fuzz_check_config.py [--count 3000] [--seed 0] [--cli-every 100]

Every mutant (tests/cli/config_fuzz.py: the example config with one to four
mutations of its data or its bytes) goes through ``load_settings`` in this
process; every ``--cli-every``-th also through the real command line as a
process. Prints ``N configs, T tracebacks, H hangs`` and, for each traceback
or hang, the mutant's number (replay it with the same seed). Exit status 1
if there was any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.cli.config_fuzz import HANG_SECONDS, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="mutants to check in process (default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cli-every", type=int, default=100, help="also run every Nth through the CLI (0: none)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as directory:
        tally = run(Path(directory), args.count, seed=args.seed, cli_every=args.cli_every)
    print(tally.line())
    print(f"seed {args.seed}, hang limit {HANG_SECONDS:g} s, {time.monotonic() - started:.1f} s in all")
    for finding in tally.tracebacks + [f"{what}: hang" for what in tally.hangs]:
        print(finding, file=sys.stderr)
    return 1 if tally.tracebacks or tally.hangs else 0


if __name__ == "__main__":
    sys.exit(main())
