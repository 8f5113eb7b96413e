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

from egressd.core.model import Settings


def secret_file_warnings(settings: Settings) -> list[str]:
    """One line per problem with a secret file the config names (the MQTT
    password file): missing, unreadable, readable by every user, or writable
    by others than its owner."""
    warnings: list[str] = []
    if settings.mqtt is not None and settings.mqtt.password_file is not None:
        warnings += _secret_file("mqtt.passwordFile", settings.mqtt.password_file)
    return warnings


def _secret_file(field: str, path: str) -> list[str]:
    try:
        mode = Path(path).stat().st_mode  # follows symlinks: a mounted Secret is a link to its data
    except OSError as exc:
        return [f"{field}: cannot read {path}: {exc.strerror or exc} (the MQTT publisher retries until it can)"]
    found: list[str] = []
    if mode & stat.S_IROTH:
        found.append(f"{field}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod o-r it")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(
            f"{field}: {path} is writable by others than its owner (mode {stat.S_IMODE(mode):04o}); chmod go-w it"
        )
    return found
