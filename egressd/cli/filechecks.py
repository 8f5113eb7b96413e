"""Checks of the files a config names that only the machine can answer:
whether a secret file exists and who else may read or change it.

The validation of the config itself is pure (:mod:`egressd.core.config`);
this is the I/O half, run by ``check-config`` and at the start of ``run``.
Its findings are warnings, not errors: a Kubernetes Secret is mounted
world-readable (mode 0644) unless the DaemonSet sets ``defaultMode``, and the
daemon must still start then; the warning says what to change.
"""

from __future__ import annotations

import stat
from pathlib import Path

from egressd.core.errors import ConfigError, Problem
from egressd.core.mesh_messages import MIN_KEY
from egressd.core.model import Settings

MAX_KEY = 4096
"""Bytes: the longest mesh key file read (a key is 32 to 64 bytes; anything
much larger is the wrong file)."""


def secret_file_warnings(settings: Settings) -> list[str]:
    """One line per problem with a secret file the config names (the MQTT
    password file): missing, unreadable, readable by every user, or writable
    by others than its owner."""
    warnings: list[str] = []
    if settings.mqtt is not None and settings.mqtt.password_file is not None:
        warnings += _secret_file("mqtt.passwordFile", settings.mqtt.password_file)
    if settings.mesh is not None and not (settings.mesh.optional and not Path(settings.mesh.key_file).exists()):
        warnings += _secret_file("mesh.keyFile", settings.mesh.key_file)
    return warnings


def read_mesh_key(settings: Settings) -> bytes | None:
    """The mesh's cluster key (the key file's bytes), None when the mesh is
    off (no ``mesh.keyFile``, or with ``mesh.optional`` a key file that does
    not exist); ConfigError naming ``mesh.keyFile`` when the file cannot be
    read or holds fewer than 32 bytes. Unlike the MQTT password this is an
    error: a gateway that cannot sign takes part in no promise, and its peers
    would count it as silent."""
    if settings.mesh is None:
        return None
    path = settings.mesh.key_file
    try:
        with Path(path).open("rb") as f:
            key = f.read(MAX_KEY + 1)
    except FileNotFoundError as exc:
        if settings.mesh.optional:
            return None
        raise ConfigError([Problem("mesh.keyFile", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except OSError as exc:
        raise ConfigError([Problem("mesh.keyFile", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    if not MIN_KEY <= len(key) <= MAX_KEY:
        raise ConfigError(
            [Problem("mesh.keyFile", f"{path} holds {len(key)} bytes; the key must be {MIN_KEY} to {MAX_KEY}")]
        )
    return key


def _secret_file(field: str, path: str) -> list[str]:
    try:
        mode = Path(path).stat().st_mode  # follows symlinks: a mounted Secret is a link to its data
    except OSError as exc:
        retry = " (the MQTT publisher retries until it can)" if field.startswith("mqtt") else ""
        return [f"{field}: cannot read {path}: {exc.strerror or exc}{retry}"]
    found: list[str] = []
    if mode & stat.S_IROTH:
        found.append(f"{field}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod o-r it")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(
            f"{field}: {path} is writable by others than its owner (mode {stat.S_IMODE(mode):04o}); chmod go-w it"
        )
    return found
