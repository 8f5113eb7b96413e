"""Secret files named by the config: who else may read or change them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from egressd.cli.filechecks import read_mesh_key, secret_file_warnings
from egressd.core.errors import ConfigError
from egressd.core.mesh_settings import MeshSettings
from egressd.core.model import NodeSettings, Settings
from egressd.core.mqtt_settings import MqttSettings

EXAMPLE = Path(__file__).parents[2] / "config" / "egressd.yaml"


def with_password_file(path: Path) -> Settings:
    mqtt = MqttSettings(host="broker", username="egressd", password_file=str(path), allow_insecure_password=True)
    return Settings(node=NodeSettings(name="gw-a"), mqtt=mqtt)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o600, []),
        (0o640, []),
        (0o644, ["is readable by every user (mode 0644); chmod o-r it"]),
        (0o620, ["is writable by others than its owner (mode 0620); chmod go-w it"]),
        (
            0o666,
            [
                "is readable by every user (mode 0666); chmod o-r it",
                "is writable by others than its owner (mode 0666); chmod go-w it",
            ],
        ),
    ],
)
def test_password_file_modes(tmp_path: Path, mode: int, expected: list[str]) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    assert secret_file_warnings(with_password_file(secret)) == [
        f"mqtt.passwordFile: {secret} {text}" for text in expected
    ]


def test_a_symlinked_secret_is_judged_by_its_target(tmp_path: Path) -> None:
    data = tmp_path / "..data"
    data.write_text("s3cret\n")
    data.chmod(0o644)
    link = tmp_path / "password"
    link.symlink_to(data)
    (warning,) = secret_file_warnings(with_password_file(link))
    assert "is readable by every user (mode 0644)" in warning


def test_a_missing_password_file(tmp_path: Path) -> None:
    (warning,) = secret_file_warnings(with_password_file(tmp_path / "nope"))
    assert warning.startswith(f"mqtt.passwordFile: cannot read {tmp_path / 'nope'}: No such file or directory")


def test_no_mqtt_no_warning() -> None:
    assert secret_file_warnings(Settings(node=NodeSettings(name="gw-a"))) == []


def test_check_config_warns_about_a_world_readable_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    config = tmp_path / "egressd.yaml"
    config.write_text(
        EXAMPLE.read_text()
        + f"mqtt:\n  host: broker.example.net\n  username: egressd\n  passwordFile: {secret}\n  tls: true\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "egressd.cli.main", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"egressd: warning: mqtt.passwordFile: {secret} is readable by every user (mode 0644)" in out.stderr
    assert "s3cret" not in out.stderr + out.stdout


def test_run_logs_the_warning_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from egressd.cli import main as cli  # noqa: PLC0415

    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o604)
    config = tmp_path / "egressd.yaml"
    config.write_text(
        EXAMPLE.read_text()
        + f"mqtt:\n  host: broker.example.net\n  username: egressd\n  passwordFile: {secret}\n  tls: true\n"
    )
    started: list[Settings] = []

    async def run_async(settings: Settings, args: object, mesh_key: bytes | None = None) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(cli, "_run_async", run_async)
    assert cli.main(["run", "--config", str(config), "--dataplane", "record"]) == 0
    assert started, "the daemon still starts"
    assert f"mqtt.passwordFile: {secret} is readable by every user (mode 0604)" in caplog.text


def with_mesh_key(path: Path) -> Settings:
    return Settings(node=NodeSettings(name="gw-a"), mesh=MeshSettings(key_file=str(path)))


def test_mesh_key_is_the_files_bytes(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(bytes(range(40)))
    key.chmod(0o600)
    assert read_mesh_key(with_mesh_key(key)) == bytes(range(40))
    assert secret_file_warnings(with_mesh_key(key)) == []
    assert read_mesh_key(Settings(node=NodeSettings(name="gw-a"))) is None


@pytest.mark.parametrize("size", [0, 31, 5000])
def test_mesh_key_of_a_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * size)
    with pytest.raises(ConfigError) as info:
        read_mesh_key(with_mesh_key(key))
    assert [p.field for p in info.value.problems] == ["mesh.keyFile"]


def test_missing_mesh_key_is_refused_and_a_world_readable_one_warned(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mesh\.keyFile: cannot read"):
        read_mesh_key(with_mesh_key(tmp_path / "absent"))
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    assert secret_file_warnings(with_mesh_key(key)) == [
        f"mesh.keyFile: {key} is readable by every user (mode 0644); chmod o-r it"
    ]


def test_an_optional_mesh_key_that_is_missing_turns_the_mesh_off(tmp_path: Path) -> None:
    """The DaemonSet's Secret is optional: no key file, no mesh, no error; any
    other failure to read it stays an error."""
    absent = Settings(node=NodeSettings(name="gw-a"), mesh=MeshSettings(key_file=str(tmp_path / "no"), optional=True))
    assert read_mesh_key(absent) is None
    assert secret_file_warnings(absent) == []  # the start says "mesh off" instead
    short = tmp_path / "short"
    short.write_bytes(b"k" * 8)
    with pytest.raises(ConfigError, match=r"mesh\.keyFile: .* holds 8 bytes"):
        read_mesh_key(replace(absent, mesh=MeshSettings(key_file=str(short), optional=True)))
    with pytest.raises(ConfigError, match=r"mesh\.keyFile: cannot read"):
        read_mesh_key(replace(absent, mesh=MeshSettings(key_file=str(tmp_path), optional=True)))  # a directory


def test_run_with_an_optional_mesh_key_missing_starts_without_the_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from egressd.cli import main as cli  # noqa: PLC0415

    config = tmp_path / "egressd.yaml"
    config.write_text(EXAMPLE.read_text() + f"mesh:\n  keyFile: {tmp_path / 'absent'}\n  optional: true\n")
    started: list[tuple[Settings, bytes | None]] = []

    async def run_async(settings: Settings, args: object, mesh_key: bytes | None = None) -> int:
        started.append((settings, mesh_key))
        return 0

    monkeypatch.setattr(cli, "_run_async", run_async)
    assert cli.main(["run", "--config", str(config), "--dataplane", "record"]) == 0
    assert [(s.mesh, key) for s, key in started] == [(None, None)]
    assert f"mesh off: mesh.keyFile {tmp_path / 'absent'} does not exist" in caplog.text
