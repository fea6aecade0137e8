#!/usr/bin/env python3
"""Hostile MQTT 5.0 clients for benches/flood-bench.sh, on raw sockets.

  props HOST PORT CONNS SECS   CONNS connections each sending, one after the
                               other for SECS seconds, QoS 1 PUBLISH packets
                               of ~1 MB holding 200,000 empty user properties;
                               prints JSON: sent, and the PUBACK reason codes.
  stuck HOST PORT FILTER SECS  one connection that subscribes to FILTER and
                               then never reads, for SECS seconds.
"""
import json
import socket
import sys
import time
from collections import Counter


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    data = s.encode()
    return len(data).to_bytes(2, "big") + data


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(host, port, client_id):
    sock = socket.create_connection((host, port), timeout=30)
    body = string("MQTT") + bytes([5, 0x02, 0, 60]) + varint(0) + string(client_id)
    sock.sendall(packet(0x10, body))
    head = read_packet(sock)
    if head[0] >> 4 != 2 or head[1][1] != 0:
        sys.exit(f"{client_id}: CONNACK refused: {head}")
    return sock


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_packet(sock):
    first = read_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = read_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, read_exact(sock, length)


def props(host, port, conns, secs):
    flood = varint(200_000 * 5) + bytes([0x26, 0, 0, 0, 0]) * 200_000
    sockets = [connect(host, port, f"props-{i}") for i in range(conns)]
    sent, reasons, packet_id = 0, Counter(), 0
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        for sock in sockets:
            packet_id = packet_id % 65535 + 1
            body = string("flood/props") + packet_id.to_bytes(2, "big") + flood + b"p"
            sock.sendall(packet(0x32, body))
            sent += 1
        for sock in sockets:
            first, body = read_packet(sock)
            while first >> 4 != 4:  # skip anything but PUBACK
                first, body = read_packet(sock)
            reasons[hex(body[2]) if len(body) > 2 else "0x0"] += 1
    print(json.dumps({"sent": sent, "puback_reasons": reasons}))


def stuck(host, port, topic_filter, secs):
    sock = socket.socket()
    # A small receive buffer: the node's writes back up at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, port))
    body = string("MQTT") + bytes([5, 0x02, 0, 60]) + varint(0) + string("stuck")
    sock.sendall(packet(0x10, body))
    read_packet(sock)
    sub = (1).to_bytes(2, "big") + varint(0) + string(topic_filter) + bytes([0])
    sock.sendall(packet(0x82, sub))
    time.sleep(secs)  # and never read


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "props":
        props(host, port, int(sys.argv[4]), float(sys.argv[5]))
    elif mode == "stuck":
        stuck(host, port, sys.argv[4], float(sys.argv[5]))
    else:
        sys.exit(__doc__)
