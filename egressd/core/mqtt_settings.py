"""Settings of the MQTT event sink (the ``mqtt:`` section of the config), and
their validation.

Same conventions as :mod:`egressd.core.config`: camelCase keys, every
problem reported with its dotted field path (``mqtt.tls.keyFile``), frozen
dataclasses whose fields say their unit, meaning and why the default. The
section is optional; absent (or ``null``) means no MQTT::

    mqtt:
      host: broker.example.net
      port: 8883              # default 1883, or 8883 with tls
      cluster: prod-eu1
      username: egressd
      passwordFile: /etc/egressd/mqtt-password
      tls:
        caFile: /etc/egressd/mqtt-ca.pem

Passwords are only read from a file (``passwordFile``), never written in the
config, so they stay out of ConfigMaps, logs and ``ps``; and they are only
sent over TLS, unless ``allowInsecurePassword: true`` says, in the config,
that the link to the broker is trusted (a broker on the same host, a lab).
Whether the password file is readable by others is checked where files are
read (the command line), not here.

Pure: file paths are checked for shape here, for existence by the adapter
when it connects (and a missing file is a connection error it logs and retries).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from egressd.core.errors import Problem
from egressd.core.scalars import closest, seconds

_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9_]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_TOPIC_WORD = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,62})$")

_Report = Callable[[str, str], None]
"""Records a problem: (field path below the section, message)."""


@dataclass(frozen=True)
class MqttTls:
    """TLS towards the broker. Verification is on unless switched off."""

    ca_file: str | None = None
    """PEM bundle of the CAs that may sign the broker's certificate; None uses
    the system's trust store."""

    cert_file: str | None = None
    """Client certificate (PEM) for brokers that authenticate clients by
    certificate; needs ``key_file``."""

    key_file: str | None = None
    """Private key of ``cert_file`` (PEM, unencrypted)."""

    insecure_skip_verify: bool = False
    """Accept any broker certificate and name. Off by default: an unverified
    broker can be impersonated; only for a lab."""


@dataclass(frozen=True)
class MqttSettings:
    """Where and how ownership events are published over MQTT.

    Topics (see docs/mqtt.md): ``<topicPrefix>/<cluster>/ip/<ip>`` (retained
    owner of each egress IP), ``<topicPrefix>/<cluster>/events`` (every
    event) and ``<topicPrefix>/<cluster>/node/<node>`` (retained online
    status, with a last will)."""

    host: str
    """Broker host name or IP address."""

    port: int = 1883
    """Broker TCP port; 1883 (MQTT) by default, 8883 (MQTT over TLS) when
    ``tls`` is set and the port is not."""

    cluster: str = "default"
    """Name of the cluster in the topics, so one broker can serve several
    clusters. A single topic level: letters, digits, ``-``, ``_``, ``.``."""

    topic_prefix: str = "egressd"
    """First level(s) of every topic. No wildcards, no leading or trailing
    ``/``, not starting with ``$`` (reserved for the broker)."""

    client_id: str | None = None
    """MQTT client identifier; None means ``egressd-<node name>``, unique per
    node as the broker requires (a second client with the same id disconnects
    the first)."""

    username: str | None = None
    """User name for broker authentication (optional)."""

    password_file: str | None = None
    """File whose content (trailing newline stripped) is the password; read at
    every connect, so a rotated secret is picked up. Needs ``username``."""

    tls: MqttTls | None = None
    """TLS settings; None means plain TCP."""

    allow_insecure_password: bool = False
    """Send ``username``/``passwordFile`` credentials over plain TCP. Off by
    default: without TLS anyone on the path reads the password (MQTT's
    CONNECT carries it in clear text), so a password without ``tls`` is
    refused unless this says the link is trusted, e.g. a broker on loopback."""

    keepalive: int = 10
    """MQTT keepalive, whole seconds (1-65535). The broker publishes this
    node's last will (offline) about 1.5 keepalives after it last heard from
    a node that vanished without closing its connection (power loss, cut
    link). 10 s keeps that under 15 s at one ping per 10 s."""

    qos: int = 1
    """QoS of every message: 0 at most once, 1 at least once, 2 exactly once.
    1 by default: the retained owner of an IP must reach the broker, and a
    duplicate event is harmless."""

    queue_size: int = 1000
    """Capacity of the event queue between the daemon and the publisher. When
    the broker is slow or away and the queue is full, the oldest event is
    dropped (and counted). The latest owner of each IP is kept apart and never
    dropped. 1000 covers minutes of events of a large cluster in turmoil."""

    timeout: float = 5.0
    """Seconds allowed to connect (TCP, TLS and the broker's CONNACK) and for
    each publish to be acknowledged; past it the connection is dropped and
    re-established. A few seconds: a healthy broker answers in milliseconds."""

    def effective_client_id(self, node: str) -> str:
        """The client identifier to use on ``node``."""
        return self.client_id or f"egressd-{node}"


_KEYS = (
    "host",
    "port",
    "cluster",
    "topicPrefix",
    "clientId",
    "username",
    "passwordFile",
    "tls",
    "allowInsecurePassword",
    "keepalive",
    "qos",
    "queueSize",
    "timeout",
)
_TLS_KEYS = ("caFile", "certFile", "keyFile", "insecureSkipVerify")


def parse_mqtt(data: Any, path: str = "mqtt") -> tuple[MqttSettings | None, list[Problem]]:
    """Build :class:`MqttSettings` from the loaded ``mqtt:`` section.

    Returns (settings, []) when valid, (None, []) when the section is absent
    or null (MQTT off), and (None, problems) listing every problem otherwise,
    each located under ``path``."""
    if data is None:
        return None, []
    problems: list[Problem] = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(f"{path}.{field}" if field else path, message))

    if not isinstance(data, Mapping):
        problem("", f"must be a mapping, got {type(data).__name__}")
        return None, problems
    _check_keys(data, problem)
    host = _host(data, problem)
    tls = _parse_tls(data.get("tls"), problem)
    default_port = 8883 if tls is not None else 1883
    port = _integer(data.get("port"), "port", problem, default_port, low=1, high=65535)
    cluster, prefix = _topic_levels(data, problem)
    client_id = _client_id(data, problem)
    username, password_file, allow_insecure = _credentials(data, problem)
    keepalive = _integer(data.get("keepalive"), "keepalive", problem, 10, low=1, high=65535)
    qos = _integer(data.get("qos"), "qos", problem, 1, low=0, high=2)
    queue_size = _integer(data.get("queueSize"), "queueSize", problem, 1000, low=1, high=None)
    timeout = _duration(data.get("timeout"), "timeout", problem, 5.0)

    if problems:
        return None, problems
    assert host is not None
    return (
        MqttSettings(
            host=host,
            port=port,
            cluster=cluster,
            topic_prefix=prefix,
            client_id=client_id,
            username=username,
            password_file=password_file,
            tls=tls,
            allow_insecure_password=allow_insecure,
            keepalive=keepalive,
            qos=qos,
            queue_size=queue_size,
            timeout=timeout,
        ),
        [],
    )


def _check_keys(data: Mapping[Any, Any], problem: _Report) -> None:
    """Reports an inline password and unknown keys."""
    for key in data:
        if key == "password":
            problem("password", "inline passwords are not accepted; put the password in a file and set passwordFile")
        elif key not in _KEYS:
            problem(str(key), "unknown key" + closest(str(key), _KEYS))


def _host(data: Mapping[Any, Any], problem: _Report) -> str | None:
    host = _string(data.get("host"), "host", problem, required=True)
    if host is not None and not _is_host(host):
        problem("host", f"must be a host name or an IP address, got {host!r}")
    return host


def _topic_levels(data: Mapping[Any, Any], problem: _Report) -> tuple[str, str]:
    """``cluster`` and ``topicPrefix``, with their defaults."""
    cluster = _string(data.get("cluster"), "cluster", problem) or "default"
    if not _TOPIC_WORD.match(cluster):
        problem("cluster", f"must be one topic level of letters, digits, '-', '_', '.', got {cluster!r}")

    prefix = _string(data.get("topicPrefix"), "topicPrefix", problem) or "egressd"
    if not all(_TOPIC_WORD.match(level) for level in prefix.split("/")):
        problem(
            "topicPrefix",
            f"must be topic levels of letters, digits, '-', '_', '.' separated by '/', got {prefix!r}",
        )
    return cluster, prefix


def _client_id(data: Mapping[Any, Any], problem: _Report) -> str | None:
    client_id = _string(data.get("clientId"), "clientId", problem)
    if client_id is not None and (len(client_id.encode()) > 65535 or any(c in client_id for c in "\0+#/")):
        problem("clientId", f"must be at most 65535 bytes without '/', '+', '#' or NUL, got {client_id!r}")
    return client_id


def _credentials(data: Mapping[Any, Any], problem: _Report) -> tuple[str | None, str | None, bool]:
    """``username``, ``passwordFile`` and ``allowInsecurePassword``: a password
    needs a user name, and TLS unless the link is declared trusted."""
    username = _string(data.get("username"), "username", problem)
    password_file = _string(data.get("passwordFile"), "passwordFile", problem)
    if password_file is not None and username is None:
        problem("passwordFile", "needs username (MQTT sends a password only with a user name)")

    allow_insecure = data.get("allowInsecurePassword", False)
    if not isinstance(allow_insecure, bool):
        problem("allowInsecurePassword", f"must be true or false, got {allow_insecure!r}")
        allow_insecure = False
    if password_file is not None and data.get("tls") in (None, False) and not allow_insecure:
        problem(
            "passwordFile",
            "a password without tls crosses the network in clear text; set tls, or allowInsecurePassword: true "
            "if the link to the broker is trusted (a broker on this host, a lab)",
        )
    return username, password_file, allow_insecure


def _parse_tls(value: Any, problem: _Report) -> MqttTls | None:
    if value is None or value is False:
        return None
    if value is True:
        return MqttTls()
    if not isinstance(value, Mapping):
        problem("tls", f"must be a mapping (or true for the system CAs), got {type(value).__name__}")
        return None
    for key in value:
        if key not in _TLS_KEYS:
            problem(f"tls.{key}", "unknown key" + closest(str(key), _TLS_KEYS))
    ca_file = _string(value.get("caFile"), "tls.caFile", problem)
    cert_file = _string(value.get("certFile"), "tls.certFile", problem)
    key_file = _string(value.get("keyFile"), "tls.keyFile", problem)
    if cert_file is not None and key_file is None:
        problem("tls.keyFile", "is required with tls.certFile")
    if key_file is not None and cert_file is None:
        problem("tls.certFile", "is required with tls.keyFile")
    insecure = value.get("insecureSkipVerify", False)
    if not isinstance(insecure, bool):
        problem("tls.insecureSkipVerify", f"must be true or false, got {insecure!r}")
        insecure = False
    return MqttTls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, insecure_skip_verify=insecure)


def _string(value: Any, field: str, problem: _Report, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            problem(field, "is required")
        return None
    if not isinstance(value, str) or not value.strip():
        problem(field, f"must be a non-empty string, got {value!r}")
        return None
    return value


def _integer(value: Any, field: str, problem: _Report, default: int, *, low: int, high: int | None) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        problem(field, f"must be a whole number, got {value!r}")
        return default
    if value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f"at least {low}"
        problem(field, f"must be {bounds}, got {value}")
        return default
    return value


def _duration(value: Any, field: str, problem: _Report, default: float) -> float:
    if value is None:
        return default
    spelled = seconds(value)
    if spelled is None or not math.isfinite(spelled):
        problem(field, f"must be seconds or a string like '500ms', '5s', got {value!r}")
        return default
    if spelled <= 0:
        problem(field, f"must be positive, got {value!r}")
        return default
    return spelled


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOSTNAME.match(value))
    return True
