"""Mutated config files for ``egressd check-config``, and the verdict on each.

Every mutant starts from the example config (config/egressd.yaml) and gets
one to four mutations, on the data (drop a key, swap a value's type, huge or
odd numbers, long strings, deep nesting, addresses that must not float) or on
the text (bad bytes, truncation, duplicated lines, aliases and alias bombs,
YAML 1.1 forms, tags). Deterministic for a seed, so a failure can be replayed.

A mutant passes when :func:`egressd.cli.main.load_settings` returns Settings
or raises ConfigError with at least one problem, within :data:`HANG_SECONDS`;
anything else is a traceback (another exception) or a hang. Used by
tests/cli/test_check_config_fuzz.py (a bounded count, in the suite) and by
chaos/fuzz_check_config.py (any count, printing the figures).
"""

from __future__ import annotations

import copy
import random
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from egressd.cli.main import load_settings
from egressd.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "egressd.yaml"

HANG_SECONDS = 5.0
"""A config that takes longer than this to check counts as a hang."""

_ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**32,
    2**63,
    10**400,
    -(10**400),
    0.0001,
    1e-9,
    1e12,
    1e309,
    float("nan"),
    "",
    " ",
    "1:30",
    "yes",
    "off",
    "0755",
    "0o755",
    "1e309",
    "-1s",
    "2.5h",
    "250ms",
    "${NODE_NAME}",
    "${UNSET_VARIABLE_X}",
    "0.0.0.0",
    "127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "169.254.1.1",
    "100.64.0.1",
    "::ffff:172.18.0.42",
    "fe80::1",
    "172.18.0.5",
    "172.18.255.255",
    "172.18.0.0/33",
    "10.244.1.7/24",
    "net0;drop",
    "..",
    "ééééééééé",
    "a" * 100_000,
    "\x00",
    "\u202e",
    [],
    {},
    [None],
    {"": None},
    {1: 2},
]

_TEXT_SNIPPETS = [
    b"\xff\xfe",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\x00",
    b"\x1b[31m",
    b"\t",
    b": : :",
    b"&a ",
    b"*a",
    b"*undefined",
    b"!!python/object:os.system ",
    b"!!int ",
    b"!!float ",
    b"!!binary ",
    b"!!set ",
    b"<<: ",
    b"? ",
    b"- ",
    b"{",
    b"[",
    b"'",
    b'"',
    b"%YAML 1.1\n---\n",
    b"---\n",
    b"...\n",
    b"\r\n",
    b"\xef\xbb\xbf",
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        data = data[key]
    return data


def _deep(rng: random.Random) -> Any:
    value: Any = rng.choice(["x", 1, None])
    for _ in range(rng.choice([10, 65, 70, 200])):  # deeper ones are written as text (the emitter recurses)
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _mutate_data(rng: random.Random, data: dict[str, Any]) -> None:
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent = _parent(data, path)
    key = path[-1]
    op = rng.randrange(8)
    if op == 0:  # drop a key or an item
        del parent[key]
    elif op == 1:  # swap the type of a value
        parent[key] = copy.deepcopy(rng.choice(_ODD_VALUES))
    elif op == 2:  # a huge number
        parent[key] = rng.choice([10 ** rng.randrange(10, 500), -(2 ** rng.randrange(31, 200)), 1e308 * 10])
    elif op == 3:  # deep nesting
        parent[key] = _deep(rng)
    elif op == 4 and isinstance(parent, dict):  # an unknown key next to it
        parent[rng.choice(["bogus", str(key).upper(), f"{key}_", "password", "mode", 1, None])] = rng.choice(
            _ODD_VALUES
        )
    elif op == 5 and isinstance(parent, list):  # a duplicate item
        parent.append(copy.deepcopy(parent[key]))
    elif op == 6:  # a long string
        parent[key] = "x" * rng.choice([1_000, 100_000, 300_000])
    else:  # a whole section replaced
        top = rng.choice(list(data) or ["node"])
        data[top] = copy.deepcopy(rng.choice(_ODD_VALUES))


def _alias_bomb(depth: int) -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return ("\n".join(lines) + f"\nnode: {{name: *a{depth - 1}}}\n").encode()


def _mutate_text(rng: random.Random, text: bytes) -> bytes:
    op = rng.randrange(9)
    at = rng.randrange(len(text) + 1)
    lines = text.split(b"\n")
    if op == 0:  # bad or special bytes somewhere
        return text[:at] + rng.choice(_TEXT_SNIPPETS) + text[at:]
    if op == 1:  # truncated
        return text[:at]
    if op == 2:  # a duplicated line: a duplicate key
        i = rng.randrange(len(lines))
        return b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    if op == 3:  # an alias bomb in front
        return _alias_bomb(rng.randrange(2, 12)) + text
    if op == 4:  # an anchor and alias pair
        return text.replace(b"net0", b"&i net0", 1) + b"\nextra: *i\n"
    if op == 5:  # YAML 1.1 forms
        return text.replace(b"2.5s", rng.choice([b"1:30", b"0:02.5", b"yes"])).replace(b"false", b"off")
    if op == 6:  # deep nesting, flow or block
        depth = rng.choice([63, 100, 999, 1000, 5000])
        if rng.random() < 0.5:
            return text + b"\nextra: " + b"[" * depth + b"]" * depth + b"\n"
        return text + b"\nextra:\n" + b"".join(b"  " * (i + 1) + b"k:\n" for i in range(depth))
    if op == 7:  # random byte flips
        out = bytearray(text)
        for _ in range(rng.randrange(1, 8)):
            if out:
                out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    return text[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + text[at:]


def mutants(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``count`` (description, file content) pairs."""
    base_text = EXAMPLE.read_bytes()
    base = yaml.safe_load(base_text)
    rng = random.Random(seed)
    for n in range(count):
        kind = rng.random()
        if kind < 0.55:
            data = copy.deepcopy(base)
            ops = rng.randrange(1, 5)
            for _ in range(ops):
                if isinstance(data, dict) and data:
                    _mutate_data(rng, data)
            try:
                text = yaml.safe_dump(data, allow_unicode=rng.random() < 0.5).encode()
            except RecursionError:  # stacked deep values: PyYAML's emitter recurses; write that nesting as text
                depth = rng.choice([500, 1000, 3000])
                text = base_text + b"\nextra: " + b"{k: " * depth + b"1" + b"}" * depth + b"\n"
            yield f"#{n} data x{ops}", text
        else:
            text = base_text
            ops = rng.randrange(1, 5)
            for _ in range(ops):
                text = _mutate_text(rng, text)
            yield f"#{n} text x{ops}", text


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _Hang


@dataclass
class Tally:
    """How the mutants fared."""

    configs: int = 0
    valid: int = 0
    config_errors: int = 0
    tracebacks: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def line(self) -> str:
        return (
            f"{self.configs} configs, {len(self.tracebacks)} tracebacks, {len(self.hangs)} hangs "
            f"({self.valid} valid, {self.config_errors} config errors; slowest {self.slowest * 1000:.0f} ms)"
        )


def check_in_process(path: Path, what: str, tally: Tally) -> None:
    """load_settings on one file, in this process (main thread: a SIGALRM
    timer turns a hang into a verdict)."""
    tally.configs += 1
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    started = time.monotonic()
    try:
        load_settings(str(path))
        tally.valid += 1
    except ConfigError as exc:
        if not exc.problems or not str(exc):
            tally.tracebacks.append(f"{what}: ConfigError without a problem")
        else:
            tally.config_errors += 1
    except _Hang:
        tally.hangs.append(what)
    except Exception:  # the point: anything else is a finding
        tally.tracebacks.append(f"{what}: {traceback.format_exc(limit=-3)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        tally.slowest = max(tally.slowest, time.monotonic() - started)


def check_with_cli(path: Path, what: str, tally: Tally) -> None:
    """``egressd check-config`` on one file, as a process: exit 0, or 2 with a
    message, and never a traceback."""
    tally.configs += 1
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "egressd.cli.main", "check-config", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=HANG_SECONDS + 10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        tally.hangs.append(what)
        return
    finally:
        tally.slowest = max(tally.slowest, time.monotonic() - started)
    if "Traceback" in out.stderr or out.returncode not in (0, 2):
        tally.tracebacks.append(f"{what}: exit {out.returncode}: {out.stderr[-2000:]}")
    elif out.returncode == 2 and not out.stderr.startswith("egressd: "):
        tally.tracebacks.append(f"{what}: exit 2 without a message")
    elif out.returncode == 0:
        tally.valid += 1
    else:
        tally.config_errors += 1


def run(directory: Path, count: int, *, seed: int = 0, cli_every: int = 0) -> Tally:
    """Check ``count`` mutants in process; every ``cli_every``-th also (not
    instead) through the real command line."""
    tally = Tally()
    path = directory / "egressd.yaml"
    for n, (what, content) in enumerate(mutants(count, seed)):
        path.write_bytes(content)
        check_in_process(path, what, tally)
        if cli_every and n % cli_every == 0:
            check_with_cli(path, f"{what} (cli)", tally)
    return tally
