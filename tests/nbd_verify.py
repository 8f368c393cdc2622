#!/usr/bin/python3
"""A verifying workload for fault tests, through an NBD export.

Writes 4 KiB blocks of a region with self-describing contents (block index, a generation
number, a random tag), one request at a time, and keeps the value of every acknowledged
write. Reads (of random blocks, and of the block just written) must return the last
acknowledged value of the block exactly: with one request in flight there is no
concurrent write, so anything else is a lost acknowledged write or a stale read.

A request that fails (the gateway gave up) is recorded as an IO error and its block is
"uncertain": its next read may show the failed write or the previous value, after which
the value read becomes the expected one. The workload never stops on an error; it stops
after --seconds or when the file named by --stop-file exists, then reads back every
block written once more and prints one JSON line:

  {"writes": N, "reads": N, "io_errors": N, "verify_errors": N, "lost_writes": N,
   "max_latency_ms": X, "p99_latency_ms": X, "stalls": [[t_s, ms], ...], "first_errors": [...]}

With --state PATH the acknowledged writes are saved on exit (also when the connection
dies, e.g. the whole cluster was killed), and --verify-only reads back every block in that
state after a restart.

With --flush-ratio P a FLUSH follows a write with probability P, and with --fua-ratio P a
write carries FUA (as a guest's fsync and journal commits do); a failed FLUSH counts as an
IO error, like a failed read or write.

Usage: nbd_verify.py URI [--region-mib 64] [--seconds 60] [--stop-file PATH]
       [--read-ratio 0.3] [--flush-ratio 0] [--fua-ratio 0] [--seed N] [--state PATH]
       [--verify-only]
"""

import argparse
import json
import os
import random
import struct
import sys
import time

try:
    import nbd
except ImportError:  # python3 on PATH may not be Debian's
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

BLOCK = 4096


def block_data(index, gen, tag):
    head = struct.pack("<QQQ", index, gen, tag)
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def data_tag(data):
    return struct.unpack("<QQQ", data[:24])[2]


def describe(data):
    index, gen, tag = struct.unpack("<QQQ", data[:24])
    if data == bytes(BLOCK):
        return "zeroes"
    return f"index {index} gen {gen} tag {tag:x}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("--region-mib", type=int, default=64)
    # Where the region starts: writers on disjoint regions of one export run side by side.
    ap.add_argument("--region-offset-mib", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--stop-file")
    ap.add_argument("--read-ratio", type=float, default=0.3)
    ap.add_argument("--flush-ratio", type=float, default=0.0)
    ap.add_argument("--fua-ratio", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--state")
    ap.add_argument("--verify-only", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    blocks = a.region_mib * (1 << 20) // BLOCK

    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    first = a.region_offset_mib * (1 << 20) // BLOCK
    if first >= size // BLOCK:
        sys.exit(f"--region-offset-mib {a.region_offset_mib} is past the export's end ({size} bytes)")
    blocks = min(blocks, size // BLOCK - first)

    # block -> bytes: the last acknowledged write, or what the first read found in a block
    # this run had not written (the export may hold an earlier run's data).
    expected = {}
    uncertain = {}  # block -> (previous value or None if unknown, failed write's data)
    written = {}  # block -> (gen, tag) of the last acknowledged write, for --state
    failed = {}  # block -> (previous (gen, tag) or None, failed write's (gen, tag))
    gen = 0
    if a.verify_only or (a.state and os.path.exists(a.state)):
        with open(a.state) as f:
            st = json.load(f)
        for b, (g, t) in st["written"].items():
            expected[int(b)] = block_data(int(b), g, t)
            written[int(b)] = (g, t)
        for b, (old, new) in st["failed"].items():
            b = int(b)
            uncertain[b] = (
                block_data(b, *old) if old else expected.get(b),
                block_data(b, *new),
            )
            failed[b] = (old, new)
        gen = st["gen"]
    stats = {"writes": 0, "reads": 0, "flushes": 0, "io_errors": 0, "verify_errors": 0,
             "lost_writes": 0}
    lat = []
    stalls = []
    errors = []
    start = time.monotonic()

    def timed(fn):
        t0 = time.monotonic()
        try:
            r = fn()
            ok = True
        except nbd.Error as e:
            r = e
            ok = False
        ms = (time.monotonic() - t0) * 1000.0
        lat.append(ms)
        if ms > 1000:
            stalls.append([round(t0 - start, 2), round(ms)])
        return ok, r

    def check(b, data, final=False):
        if b in uncertain:
            old, new = uncertain.pop(b)
            was = failed.pop(b, (None, None))
            # `old` is None when this run never knew the block's earlier contents.
            if data == new or old is None or data == old:
                expected[b] = data
                g = was[1] if data == new else was[0]
                if g:
                    written[b] = tuple(g)
                return
            stats["verify_errors"] += 1
            errors.append(f"block {b}: after a failed write read {describe(data)}")
            return
        if b not in expected:
            # Never written by this run: whatever it holds is its value from now on.
            expected[b] = data
            return
        want = expected[b]
        if data != want:
            stats["verify_errors"] += 1
            stats["lost_writes"] += 1
            errors.append(
                f"block {b}{' (final pass)' if final else ''}: read {describe(data)}, "
                f"expected {describe(want)}"
            )

    def read(b, final=False):
        ok, r = timed(lambda: h.pread(BLOCK, b * BLOCK))
        if not ok:
            stats["io_errors"] += 1
            errors.append(f"read of block {b}: {r}")
            return
        stats["reads"] += 1
        check(b, bytes(r), final)

    dead = False
    run_errors = 0
    while not a.verify_only and time.monotonic() - start < a.seconds:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if h.aio_is_closed() or h.aio_is_dead() or run_errors > 20:
            dead = True  # the gateway went away (the test killed it)
            break
        if expected and rng.random() < a.read_ratio:
            read(rng.choice(list(expected.keys())) if rng.random() < 0.8 else first + rng.randrange(blocks))
            continue
        b = first + rng.randrange(blocks)
        gen += 1
        data = block_data(b, gen, rng.getrandbits(64))
        flags = nbd.CMD_FLAG_FUA if rng.random() < a.fua_ratio else 0
        ok, r = timed(lambda: h.pwrite(data, b * BLOCK, flags))
        if ok:
            run_errors = 0
            stats["writes"] += 1
            expected[b] = data
            written[b] = (gen, data_tag(data))
            uncertain.pop(b, None)
            failed.pop(b, None)
            # Read back now and then: the newest value must be there at once.
            if rng.random() < 0.1:
                read(b)
            if rng.random() < a.flush_ratio:
                ok, r = timed(h.flush)
                if ok:
                    stats["flushes"] += 1
                else:
                    run_errors += 1
                    stats["io_errors"] += 1
                    errors.append(f"flush: {r}")
        else:
            run_errors += 1
            stats["io_errors"] += 1
            errors.append(f"write of block {b}: {r}")
            uncertain[b] = (expected.get(b), data)
            failed[b] = (written.get(b), (gen, data_tag(data)))
            written.pop(b, None)

    if a.state:
        with open(a.state, "w") as f:
            json.dump({"written": written, "failed": failed, "gen": gen}, f)
    if not dead:
        for b in sorted(set(expected) | set(uncertain)):
            read(b, final=True)
    try:
        if not dead:
            h.shutdown()
    except nbd.Error:
        pass
    lat.sort()
    out = dict(stats)
    out["blocks_known"] = len(expected)
    out["max_latency_ms"] = round(lat[-1], 1) if lat else 0
    out["p99_latency_ms"] = round(lat[int(len(lat) * 0.99)], 1) if lat else 0
    out["seconds"] = round(time.monotonic() - start, 1)
    out["stalls"] = stalls[:50]
    out["first_errors"] = errors[:20]
    out["seed"] = a.seed
    out["connection_lost"] = dead
    print(json.dumps(out), flush=True)
    return 0 if stats["verify_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
