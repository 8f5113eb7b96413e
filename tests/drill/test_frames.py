"""The drill's frames: the ARP request, frame decoding, the BPF filter."""

from __future__ import annotations

import socket
import struct

from egressd.drill.frames import arp_request, bpf_program, parse_frame


def test_arp_request_parses_back() -> None:
    mac = bytes.fromhex("02e9d0000001")
    frame = arp_request(mac, "172.18.255.254", "172.18.0.42")
    assert len(frame) == 60
    parsed = parse_frame(frame)
    assert parsed is not None
    assert (parsed.kind, parsed.op, parsed.src_mac) == ("arp", 1, "02:e9:d0:00:00:01")
    assert (parsed.sender_ip, parsed.target_ip) == ("172.18.255.254", "172.18.0.42")


def test_probe_frames_parse_with_prober_and_sequence() -> None:
    payload = b"xwing.1 42 123.456000"
    udp = struct.pack("!HHHH", 40000, 9000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton("172.18.0.42"),
                     socket.inet_aton("172.18.0.7"))  # fmt: skip
    eth = bytes.fromhex("aabbccddeeff") + bytes.fromhex("020000000005") + b"\x08\x00"
    parsed = parse_frame(eth + ip + udp)
    assert parsed is not None
    assert (parsed.kind, parsed.src_mac, parsed.sender_ip) == ("probe", "02:00:00:00:00:05", "172.18.0.42")
    assert (parsed.prober, parsed.seq) == ("xwing.1", 42)
    assert parse_frame(eth + ip + struct.pack("!HHHH", 40000, 53, 8, 0)) is None


def test_bpf_program_jumps_stay_inside_it() -> None:
    prog = bpf_program(["172.18.0.42", "172.18.0.43"])
    for i, (code, jt, jf, _) in enumerate(prog):
        if code == 0x15:
            assert i + 1 + jt < len(prog)
            assert i + 1 + jf < len(prog)
    assert prog[-1] == (0x06, 0, 0, 256)
    assert prog[-2] == (0x06, 0, 0, 0)
