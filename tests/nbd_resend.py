#!/usr/bin/python3
"""An NBD connection dropped with writes in flight, then resent, as qemu's `reconnect-delay`
does: the old requests must never land after the newer writes that followed them.

A raw NBD client (no libnbd: it must be able to drop a connection with requests in flight):

1. Sends one pipelined WRITE (generation 1) to each of BLOCKS blocks while the primary of
   their object is stopped (SIGSTOP by the caller), so the gateway holds them all, and
   closes the connection without reading a reply.
2. Connects again and resends the same writes (qemu resends what was not answered), waits
   for every answer, then writes generation 2 to every block and waits for those answers.
3. Resumes the stopped OSD (SIGCONT, `--resume PID`): anything it still held from the old
   connection may now try to land.
4. Reads every block for `--watch` seconds: each must hold generation 2 every time. A
   generation-1 block is an orphaned request that landed after its resend.

Prints one JSON line: {"errors": [...], "reads": N, "resend_ms": X}.
Exit status 0 when there is no error.

Usage: nbd_resend.py SOCKET EXPORT [--blocks 16] [--watch 10] [--resume PID]
"""

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time

BLOCK = 4096
REQUEST_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
OPT_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
REP_MAGIC = 0x3E889045565A9
OPT_GO = 7
REP_ACK = 1
CMD_READ, CMD_WRITE = 0, 1


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        part = s.recv(n - len(buf))
        if not part:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += part
    return buf


def connect(path, export):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    head = recv_exact(s, 18)
    if head[:8] != b"NBDMAGIC" or head[8:16] != b"IHAVEOPT":
        raise ConnectionError(f"not a newstyle NBD server: {head!r}")
    s.sendall(struct.pack(">I", 1 | 2))  # fixed newstyle, no zeroes
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", OPT_MAGIC, OPT_GO, len(data)) + data)
    while True:
        magic, _opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != REP_MAGIC:
            raise ConnectionError(f"bad option reply magic {magic:#x}")
        body = recv_exact(s, length)
        if rtype == REP_ACK:
            return s
        if rtype & 0x80000000:
            raise ConnectionError(f"NBD_OPT_GO refused ({rtype:#x}): {body!r}")


def block_data(index, gen):
    head = struct.pack(">QQ", index, gen)
    return (head * (BLOCK // len(head)))[:BLOCK]


def send_write(s, cookie, index, gen):
    s.sendall(
        struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, cookie, index * BLOCK, BLOCK)
        + block_data(index, gen)
    )


def read_reply(s, length=0):
    magic, error, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != REPLY_MAGIC:
        raise ConnectionError(f"bad reply magic {magic:#x}")
    data = recv_exact(s, length) if error == 0 and length else b""
    return cookie, error, data


def write_all(s, blocks, gen, errors):
    for b in range(blocks):
        send_write(s, (gen << 32) | b, b, gen)
    for _ in range(blocks):
        cookie, error, _ = read_reply(s)
        if error:
            errors.append(f"write of block {cookie & 0xFFFFFFFF} (generation {gen}) failed: errno {error}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("socket")
    p.add_argument("export")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--watch", type=float, default=10.0)
    p.add_argument("--resume", type=int)
    a = p.parse_args()
    errors = []

    # 1. Pipelined writes held by the stopped primary; the connection drops under them.
    s = connect(a.socket, a.export)
    for b in range(a.blocks):
        send_write(s, (1 << 32) | b, b, 1)
    time.sleep(0.5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()

    # 2. Reconnect, resend, then newer writes of the same blocks.
    t = time.monotonic()
    s = connect(a.socket, a.export)
    write_all(s, a.blocks, 1, errors)
    resend_ms = (time.monotonic() - t) * 1000
    write_all(s, a.blocks, 2, errors)

    # 3. The stopped OSD runs again with whatever it held.
    if a.resume:
        os.kill(a.resume, signal.SIGCONT)

    # 4. Every block must stay at generation 2.
    reads = 0
    end = time.monotonic() + a.watch
    while time.monotonic() < end and len(errors) < 20:
        for b in range(a.blocks):
            s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, b, b * BLOCK, BLOCK))
            _, error, data = read_reply(s, BLOCK)
            reads += 1
            if error:
                errors.append(f"read of block {b} failed: errno {error}")
            elif data != block_data(b, 2):
                index, gen = struct.unpack(">QQ", data[:16])
                errors.append(
                    f"block {b} holds block {index} generation {gen} after generation 2 was acknowledged"
                )
        time.sleep(0.1)
    s.close()
    print(json.dumps({"errors": errors, "reads": reads, "resend_ms": round(resend_ms)}))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
