"""Frames of the drill's bridge watcher: the ARP request it sends, the frames it decodes, its BPF filter."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from egressd.lab.scenario import OUTPOST_UDP_PORT

_ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (Ethernet II), padded to the 60-byte minimum."""
    frame = b"\xff" * 6 + sender_mac + struct.pack("!H", _ETH_P_ARP)
    frame += struct.pack("!HHBBH", 1, _ETH_P_IP, 6, 4, 1)
    frame += sender_mac + socket.inet_aton(sender_ip) + b"\x00" * 6 + socket.inet_aton(target_ip)
    return frame.ljust(60, b"\x00")


@dataclass(frozen=True)
class Frame:
    """What the watcher keeps of a captured frame."""

    kind: str
    """``arp`` or ``probe``."""
    src_mac: str
    sender_ip: str
    """ARP: sender protocol address; probe: IPv4 source address."""
    op: int = 0
    target_ip: str = ""
    prober: str | None = None
    seq: int | None = None


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_frame(frame: bytes, probe_port: int = OUTPOST_UDP_PORT) -> Frame | None:
    """An ARP frame or a UDP probe datagram to ``probe_port``; None for anything else."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == _ETH_P_ARP and len(frame) >= 42:
        (op,) = struct.unpack_from("!H", frame, 20)
        return Frame(
            "arp",
            _mac(frame[22:28]),
            socket.inet_ntoa(frame[28:32]),
            op=op,
            target_ip=socket.inet_ntoa(frame[38:42]),
        )
    if ethertype != _ETH_P_IP or len(frame) < 34 or frame[23] != socket.IPPROTO_UDP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    if len(frame) < udp + 8:
        return None
    (dport,) = struct.unpack_from("!H", frame, udp + 2)
    if dport != probe_port:
        return None
    payload = frame[udp + 8 :].split()
    prober: str | None = None
    seq: int | None = None
    if len(payload) >= 2:
        with contextlib.suppress(UnicodeDecodeError, ValueError):
            prober, seq = payload[0].decode(), int(payload[1])
    return Frame("probe", _mac(frame[6:12]), socket.inet_ntoa(frame[26:30]), prober=prober, seq=seq)


def bpf_program(sources: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept ARP, and IPv4 UDP whose source is one of ``sources``; drop the rest."""
    ld_h, ld_b, ld_w, jeq, ret = 0x28, 0x30, 0x20, 0x15, 0x06
    n = len(sources)
    # 0 ldh [12]; 1 jeq ARP; 2 jeq IP; 3 ldb [23]; 4 jeq UDP; 5 ld [26]; 6..6+n-1 jeq src; drop; accept
    drop = 6 + n
    accept = drop + 1
    prog = [
        (ld_h, 0, 0, 12),
        (jeq, accept - 2, 0, _ETH_P_ARP),
        (jeq, 0, drop - 3, _ETH_P_IP),
        (ld_b, 0, 0, 23),
        (jeq, 0, drop - 5, socket.IPPROTO_UDP),
        (ld_w, 0, 0, 26),
    ]
    for i, src in enumerate(sources):
        at = 6 + i
        prog.append((jeq, accept - at - 1, 0, int(ipaddress.IPv4Address(src))))
    prog += [(ret, 0, 0, 0), (ret, 0, 0, 256)]
    return prog
