"""Who answers ARP for the egress IPs on the kind network (run on the Docker host, as root).

Sends an ARP request for each egress IP every 10 ms from a raw socket on the
kind network's bridge and prints one JSON line per reply: CLOCK_MONOTONIC
time, the IP and the MAC that answered. ``run.sh`` maps MACs to nodes and
feeds the lines to ``analyse.py``, which finds any interval in which two nodes
answered for one IP with the same definition as the lab drills
(``egressd.drill.analysis.dual_owner_intervals``).

    python arpwatch.py --bridge br-1a2b3c4d5e6f --ips 172.18.0.42,172.18.0.43 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from egressd.drill.frames import arp_request, parse_frame

ETH_P_ARP = 0x0806
#: a source no node uses: a locally administered MAC and the top of the kind subnet
WATCHER_MAC = bytes.fromhex("02eeeeeeee01")
WATCHER_IP = "172.18.255.254"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--ips", required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    ips = args.ips.split(",")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((args.bridge, ETH_P_ARP))
    sock.settimeout(0.001)
    end = time.monotonic() + args.seconds
    next_send = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            for ip in ips:
                sock.send(arp_request(WATCHER_MAC, WATCHER_IP, ip))
            next_send = now + args.interval
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        parsed = parse_frame(frame)
        if parsed is not None and parsed.kind == "arp" and parsed.op == 2 and parsed.sender_ip in ips:
            print(json.dumps({"t": time.monotonic(), "ip": parsed.sender_ip, "mac": parsed.src_mac}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
