#!/usr/bin/env python3
"""Merges the per-target fio results of bench/cluster.sh into one table and one JSON file."""
import json
import os
import sys

work, out_path, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
JOBS = ["randwrite-4k-qd1", "randread-4k-qd1", "randwrite-4k-qd32", "randread-4k-qd32", "seqwrite-1m-qd8", "seqread-1m-qd8"]


def load(target, job):
    rows = os.path.join(work, target, "rows.jsonl")
    if os.path.exists(rows):
        for line in open(rows):
            r = json.loads(line)
            if r["job"] == job:
                return {"job": job, "target": target, "iops": r["iops"], "mean_us": r["mean_us"], "p99_us": r["p99_us"],
                        "mib_s": r["mib_s"], "errors": 0}
        return None
    path = os.path.join(work, target, job + ".json")
    if not os.path.exists(path):
        return None
    try:
        d = json.load(open(path))
    except ValueError:
        return None
    j = d["jobs"][0]
    x = j["write" if "write" in job else "read"]
    lat = x["lat_ns"]
    pct = lat.get("percentile", {})
    return {
        "job": job,
        "target": target,
        "iops": round(x["iops"], 1),
        "mean_us": round(lat["mean"] / 1000, 1),
        "p99_us": round(pct.get("99.000000", 0) / 1000, 1),
        "mib_s": round(x["bw_bytes"] / 1048576, 1),
        "errors": j.get("error", 0),
    }


rows = [r for job in JOBS for t in targets if (r := load(t, job))]
by = {(r["job"], r["target"]): r for r in rows}
print()
hdr = "%-18s %-13s %10s %10s %10s %9s %12s" % ("job", "target", "IOPS", "MiB/s", "mean_us", "p99_us", "vs qemu-nbd")
print(hdr)
print("-" * len(hdr))
for job in JOBS:
    base = by.get((job, "qemu-nbd"))
    for t in targets:
        r = by.get((job, t))
        if not r:
            print("%-18s %-13s %s" % (job, t, "no result"))
            continue
        ratio = "%.2fx" % (r["iops"] / base["iops"]) if base and base["iops"] else "-"
        r["vs_qemu_nbd"] = round(r["iops"] / base["iops"], 3) if base and base["iops"] else None
        print("%-18s %-13s %10.0f %10.1f %10.1f %9.1f %12s" % (job, t, r["iops"], r["mib_s"], r["mean_us"], r["p99_us"], ratio))
cpu = os.path.join(work, "atlant", "cpu.txt")
if os.path.exists(cpu):
    print("\ncluster CPU seconds over the whole atlant run: " + ", ".join(l.strip() for l in open(cpu)))
os.makedirs(os.path.dirname(out_path), exist_ok=True)
json.dump(rows, open(out_path, "w"), indent=2)
print("\nwrote " + out_path)
bad = [r for r in rows if r["errors"]]
sys.exit(1 if bad else 0)
