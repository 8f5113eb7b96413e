"""Reading a config file: whatever the bytes, a document or a ConfigError
naming the file and the place, in bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from egressd.cli.configfile import MAX_BYTES, MAX_DEPTH, parse_yaml, read_config
from egressd.cli.main import load_settings
from egressd.core.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "egressd.yaml"


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(str(path))
    return str(info.value)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "egressd.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_non_utf8_names_the_file_and_the_byte_offset(tmp_path: Path) -> None:
    text = EXAMPLE.read_bytes()
    offset = text.index(b"kind-worker3")
    path = write(tmp_path, text[:offset] + b"\xff\xfe" + text[offset:])
    message = error_of(path)
    line = text.count(b"\n", 0, offset) + 1
    assert message.startswith(f"{path}: 1 problem(s)")
    assert f"file: not UTF-8: byte 0xff at offset {offset} (line {line})" in message


@pytest.mark.parametrize(
    "text",
    [
        "node: " + "[" * 1000 + "]" * 1000,
        "node:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(1000)),
        "node: " + "{a: " * 1000 + "1" + "}" * 1000,
    ],
    ids=["flow-lists", "block-mappings", "flow-mappings"],
)
def test_deep_nesting_is_an_error_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    assert f"nested deeper than {MAX_DEPTH} levels" in error_of(write(tmp_path, text))


def test_nesting_within_the_bound_reads(tmp_path: Path) -> None:
    nested: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert read_config(str(write(tmp_path, "[" * MAX_DEPTH + "]" * MAX_DEPTH))) == nested


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("node: {name: ${A9}}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    started = time.monotonic()
    message = error_of(path)
    assert time.monotonic() - started < 1.0
    assert "aliases are not accepted in egressd configs (found *a0)" in message
    assert "at line 2" in message


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "node:\n  name: gw-a\n  address: 10.0.0.1\n  name: gw-b\n")
    assert "duplicate key 'name' (lines 2 and 4)" in error_of(path)


def test_yaml_1_1_surprises_read_as_yaml_1_2() -> None:
    data = parse_yaml("a: 1:30\nb: yes\nc: off\nd: 0755\ne: 0o755\nf: 2024-05-01\ng: true\nh: null\ni: 2.5\n")
    assert data == {
        "a": "1:30",
        "b": "yes",
        "c": "off",
        "d": 755,
        "e": 0o755,
        "f": "2024-05-01",
        "g": True,
        "h": None,
        "i": 2.5,
    }


def test_a_sexagesimal_duration_is_a_problem_not_90_seconds(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    text = yaml.safe_dump(data).replace("leaseDuration: 2.5s", "leaseDuration: 1:30")
    assert "leaseDuration: 1:30" in text
    assert "timing.leaseDuration: must be seconds or a string like '250ms', '2.5s', got '1:30'" in error_of(
        write(tmp_path, text)
    )


def test_yes_is_not_a_boolean(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("  namespace: egressd\n", "  namespace: egressd\n  excludeCordoned: yes\n")
    assert "kubernetes.excludeCordoned: must be true or false, got 'yes'" in error_of(write(tmp_path, text))


def test_a_100_kb_bad_value_is_not_echoed_whole(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("interface: net0", "interface: " + "x" * 100_000)
    message = error_of(write(tmp_path, text))
    assert "groups[0].interface: is not a valid interface name" in message
    assert "more characters)" in message
    assert len(message) < 1000


def test_a_malformed_cidr_and_a_duplicate_egress_ip_are_both_reported(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("- 172.18.0.43", "- 172.18.0.42").replace("10.244.2.0/24", "10.244.2.0/33")
    message = error_of(write(tmp_path, text))
    assert "groups[0].sourceCIDRs[1]: is not a CIDR: '10.244.2.0/33'" in message
    assert "groups[0].egressIPs[1]: 172.18.0.42 is listed twice (also at groups[0].egressIPs[0])" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("node: !!int abc\n", "cannot read this tag:yaml.org,2002:int value"),
        ("node: !!float 1e\n", "cannot read this tag:yaml.org,2002:float value"),
        ("node: !!binary zz\n", "failed to decode base64"),
        ("node: !!python/object:os.system x\n", "could not determine a constructor"),
        ("node: " + "9" * 5000 + "\n", "cannot read this tag:yaml.org,2002:int value"),
        ("node: a\x00\n", "not valid YAML at line 1, column 8: special characters are not allowed (#x0000)"),
        ("? [1]\n: 2\n", "found unhashable key"),
    ],
)
def test_odd_scalars_and_tags_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(write(tmp_path, text))


def test_a_file_over_the_size_bound_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "# " + "x" * MAX_BYTES + "\n")
    assert f"is larger than {MAX_BYTES} bytes" in error_of(path)
