"""``egressd check-config`` on 500 mutated configs: each gives Settings or a
ConfigError (exit 0 or 2 with a message), never a traceback or a hang.

The mutants are those of tests/cli/config_fuzz.py (seeded, replayable); a
larger run prints its figures: ``python chaos/fuzz_check_config.py --count 3000``.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.cli.config_fuzz import run


def test_500_mutated_configs_give_settings_or_a_config_error(tmp_path: Path) -> None:
    started = time.monotonic()
    tally = run(tmp_path, 500, seed=20261204, cli_every=100)
    elapsed = time.monotonic() - started
    print(tally.line())
    assert tally.tracebacks == []
    assert tally.hangs == []
    assert tally.configs == 505  # 500 in process, 5 of them also through the command line
    assert tally.valid > 0 and tally.config_errors > tally.configs // 2  # the mutants reach both outcomes
    assert elapsed < 60, f"{elapsed:.1f} s"
