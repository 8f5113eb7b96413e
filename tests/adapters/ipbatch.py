"""What pyroute2 would send: the bytes of one ``IPBatch`` request, its sequence and port id zeroed."""

from __future__ import annotations

import struct
from collections.abc import Callable

from pyroute2 import IPBatch

HEADER = struct.Struct("=IHHII")


def pyroute2_sent(request: Callable[[IPBatch], object]) -> bytes:
    """Run ``request`` on a fresh ``IPBatch`` (e.g. ``lambda b: b.route("replace", ...)``) and
    return the message it encoded, sequence number and port id set to 0."""
    batch = IPBatch()
    request(batch)
    data = bytearray(batch.batch)
    batch.close()
    length, kind, flags, _seq, _port = HEADER.unpack_from(data)
    HEADER.pack_into(data, 0, length, kind, flags, 0, 0)
    return bytes(data)
