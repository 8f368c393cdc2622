#!/usr/bin/env python3
"""Merges the results of bench/store.sh: the store beside fio per job and target (one table,
target/bench/store.json) and the write amplification, index RAM and open time figures
(target/bench/store-extra.json). Writes the missed targets to WORK/misses.txt, one
"target job" a line, for the profiling step. Exits 1 if a job has no result or failed."""
import json
import os
import sys

work, out_path, extra_path = sys.argv[1], sys.argv[2], sys.argv[3]
TARGETS = ["file", "loop"]
JOBS = ["randwrite-4k-qd1", "randwrite-4k-qd32", "randread-4k-qd1", "randread-4k-qd32", "seqwrite-1m-qd8", "seqread-1m-qd8"]
# The targets: QD32 4 KiB random IOPS at least 0.8x fio's; QD1 mean at most fio's + 15 us.
MIN_QD32_RATIO = 0.8
MAX_QD1_EXTRA_US = 15.0


def load_json(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        # store_bench prints one JSON line; fio one document.
        return json.loads(text.splitlines()[-1]) if text.startswith("{\"mode\"") else json.loads(text)
    except (OSError, ValueError, IndexError):
        return None


def fio_row(target, job):
    d = load_json(os.path.join(work, target, "fio-%s.json" % job))
    if not d or not d.get("jobs"):
        return None
    j = d["jobs"][0]
    x = j["write" if "write" in job else "read"]
    lat = x["lat_ns"]
    ops = x.get("total_ios", 0)
    cpu_s = (j.get("usr_cpu", 0) + j.get("sys_cpu", 0)) / 100.0 * x.get("runtime", 0) / 1000.0
    return {
        "job": job,
        "target": target,
        "engine": "fio",
        "iops": round(x["iops"], 1),
        "mean_us": round(lat["mean"] / 1000, 1),
        "p99_us": round(lat.get("percentile", {}).get("99.000000", 0) / 1000, 1),
        "mib_s": round(x["bw_bytes"] / 1048576, 1),
        "cpu_us_per_op": round(cpu_s * 1e6 / ops, 1) if ops else None,
        "errors": j.get("error", 0),
    }


def store_row(target, job):
    d = load_json(os.path.join(work, target, "store-%s.json" % job))
    if not d or d.get("mode") != "run":
        return None
    return {
        "job": job,
        "target": target,
        "engine": "store",
        "iops": round(d["iops"], 1),
        "mean_us": round(d["mean_us"], 1),
        "p99_us": round(d["p99_us"], 1),
        "mib_s": round(d["mib_s"], 1),
        "cpu_us_per_op": round(d["cpu_us_per_op"], 1),
        "errors": d.get("checksum_errors", 0),
        "io": d.get("io"),
        "device": d.get("device"),
        "durability": d.get("durability"),
    }


def check(job, store, fio):
    """(ratio, verdict, criterion) of a store row against the fio row of the same job and target."""
    ratio = round(store["iops"] / fio["iops"], 3) if fio and fio["iops"] else None
    if not fio or not job.startswith("rand"):
        return ratio, "-", None
    if job.endswith("-qd32"):
        ok = ratio is not None and ratio >= MIN_QD32_RATIO
        return ratio, "PASS" if ok else "MISS", "iops >= %.1fx fio (%.0f)" % (MIN_QD32_RATIO, MIN_QD32_RATIO * fio["iops"])
    if job.endswith("-qd1"):
        limit = fio["mean_us"] + MAX_QD1_EXTRA_US
        return ratio, "PASS" if store["mean_us"] <= limit else "MISS", "mean <= fio + %.0f us (%.1f)" % (MAX_QD1_EXTRA_US, limit)
    return ratio, "-", None


rows, misses, bad = [], [], []
targets = [t for t in TARGETS if os.path.isdir(os.path.join(work, t))]
print()
hdr = "%-18s %-6s %-6s %10s %9s %9s %9s %10s %9s  %s" % (
    "job", "target", "engine", "IOPS", "MiB/s", "mean_us", "p99_us", "store/fio", "cpu_us/op", "check")
print(hdr)
print("-" * (len(hdr) + 30))
for job in JOBS:
    for t in targets:
        fio, store = fio_row(t, job), store_row(t, job)
        if not fio and not store:
            continue
        for r in (fio, store):
            if r:
                rows.append(r)
        if fio:
            print("%-18s %-6s %-6s %10.0f %9.1f %9.1f %9.1f %10s %9s" % (
                job, t, "fio", fio["iops"], fio["mib_s"], fio["mean_us"], fio["p99_us"], "", fio["cpu_us_per_op"]))
        else:
            print("%-18s %-6s %-6s no result" % (job, t, "fio"))
            bad.append("fio %s %s" % (t, job))
        if store:
            ratio, verdict, criterion = check(job, store, fio)
            store["ratio_to_fio"] = ratio
            store["check"] = verdict
            store["criterion"] = criterion
            if fio:
                store["mean_minus_fio_us"] = round(store["mean_us"] - fio["mean_us"], 1)
            if verdict == "MISS":
                misses.append((t, job))
            print("%-18s %-6s %-6s %10.0f %9.1f %9.1f %9.1f %10s %9.1f  %s%s" % (
                job, t, "store", store["iops"], store["mib_s"], store["mean_us"], store["p99_us"],
                "%.2fx" % ratio if ratio is not None else "-", store["cpu_us_per_op"], verdict,
                " (%s)" % criterion if criterion else ""))
        else:
            print("%-18s %-6s %-6s no result" % (job, t, "store"))
            bad.append("store %s %s" % (t, job))
bad += ["%s %s %s: errors %s" % (r["engine"], r["target"], r["job"], r["errors"]) for r in rows if r["errors"]]
if rows:
    r = next((r for r in rows if r["engine"] == "store"), {})
    print("\nstore: device %s (--io %s), durability=%s; fio: direct=1%s, on the same file/device, same run"
          % (r.get("device"), r.get("io"), r.get("durability"), ", sync=dsync for writes" if r.get("durability") == "immediate" else ""))
if os.path.exists(os.path.join(work, "loop-skipped")):
    print(open(os.path.join(work, "loop-skipped")).read().strip())

extra = {}
print("\n== extra figures")
for qd in (32, 1):
    wa, run, fill = (load_json(os.path.join(work, n)) for n in ("wa-qd%d.json" % qd, "wa-run-qd%d.json" % qd, "wa-fill.json"))
    if not (wa and run):
        continue
    device_bytes = (wa["after"][1] - wa["before"][1]) * 512
    device_ios = wa["after"][0] - wa["before"][0]
    client = run["client_bytes"]
    fig = {
        "qd": qd,
        "client_bytes": client,
        "client_writes": run["ops"],
        "device_bytes_written": device_bytes,
        "device_write_ios": device_ios,
        "write_amplification": round(device_bytes / client, 3) if client else None,
        "device_writes_per_client_write": round(device_ios / run["ops"], 3) if run["ops"] else None,
        "client_bytes_over_device_size": round(client / wa["device_bytes"], 2),
        "store_filled_fraction": fill and fill.get("used_fraction"),
        "iops": run["iops"],
        "prefilled_objects": run["prefilled_objects"],
    }
    extra["write_amplification_qd%d" % qd] = fig
    print("write amplification, 4 KiB random writes QD%d on the loop device: %.3f (device %d bytes in %d writes / client "
          "%d bytes in %d writes = %.2fx the %d-byte device; store %.0f%% full; %.2f device writes per client write)" % (
              qd, fig["write_amplification"] or 0, device_bytes, device_ios, client, run["ops"],
              fig["client_bytes_over_device_size"], wa["device_bytes"], 100 * (fill or {}).get("used_fraction", 0),
              fig["device_writes_per_client_write"] or 0))
if os.path.exists(os.path.join(work, "wa-skipped")):
    print("write amplification: skipped (no loop device)")

fill, opened = load_json(os.path.join(work, "index-fill.json")), load_json(os.path.join(work, "index-open.json"))
if fill:
    fig = {
        "device_bytes": fill["device_bytes"],
        "object_size": fill["object_size"],
        "objects": fill["objects"],
        "data_bytes": fill["used_bytes"],
        "used_fraction": fill["used_fraction"],
        "stopped_by": fill["stopped_by"],
        "index_bytes": fill["index_bytes"],
        "index_bytes_per_tb": round(fill["index_bytes_per_tb"]),
    }
    line = "index RAM: %d bytes for %d objects of %d KiB (%d bytes of data, %.1f%% of capacity, stopped: %s) = %.2f GiB per TB of data" % (
        fill["index_bytes"], fill["objects"], fill["object_size"] >> 10, fill["used_bytes"], 100 * fill["used_fraction"],
        fill["stopped_by"], fill["index_bytes_per_tb"] / 2**30)
    if opened:
        rss_per_tb = opened["rss_delta_trimmed_kib"] * 1024 * 1e12 / max(opened["used_bytes"], 1)
        fig["rss_delta_on_open_bytes"] = opened["rss_delta_kib"] * 1024
        fig["rss_delta_on_open_trimmed_bytes"] = opened["rss_delta_trimmed_kib"] * 1024
        fig["rss_delta_on_open_trimmed_per_tb"] = round(rss_per_tb)
        fig["open_ms"] = opened["open_ms"]
        line += "; RSS a fresh open adds: %d KiB, %d KiB after malloc_trim = %.2f GiB per TB" % (
            opened["rss_delta_kib"], opened["rss_delta_trimmed_kib"], rss_per_tb / 2**30)
    extra["index_ram"] = fig
    print(line)

fill, empty, jour, half = (load_json(os.path.join(work, n)) for n in
                           ("open-fill.json", "open-empty.json", "open-journal.json", "open-half.json"))
if fill and empty:
    # Open time scales with the index (checkpoint read + decode + rewrite); if the fill ran out of
    # time, scale to the 90% of the device the issue asks about.
    scale = 0.9 / fill["used_fraction"] if fill["used_fraction"] < 0.89 else 1.0
    fig = {
        "device_bytes": fill["device_bytes"],
        "filled_fraction": fill["used_fraction"],
        "objects": fill["objects"],
        "fill_stopped_by": fill["stopped_by"],
        "fill_seconds": fill["seconds"],
        "fill_mib_s": fill["mib_s"],
        "open_ms_journal_empty": empty["open_ms"],
        "wall_ms_journal_empty": empty["wall_ms"],
        "journal_blocks": empty["journal_blocks"],
        "index_bytes": empty["index_bytes"],
        "index_bytes_per_tb": round(empty["index_bytes_per_tb"]),
        "rss_delta_on_open_bytes": empty["rss_delta_kib"] * 1024,
        "rss_delta_on_open_trimmed_bytes": empty["rss_delta_trimmed_kib"] * 1024,
        "rss_delta_on_open_trimmed_per_tb": round(empty["rss_delta_trimmed_kib"] * 1024 * 1e12 / max(empty["used_bytes"], 1)),
    }
    print("open time, %.1f GiB device %.1f%% full (%d objects of 128 KiB, filled at %.0f MiB/s in %.0f s, stopped: %s):" % (
        fill["device_bytes"] / 2**30, 100 * fill["used_fraction"], fill["objects"], fill["mib_s"], fill["seconds"],
        fill["stopped_by"]))
    print("  journal empty: open_ms %d (wall %.0f ms); index %d bytes = %.2f GiB per TB of data; RSS the open added %d KiB,"
          " %d KiB after malloc_trim = %.2f GiB per TB" % (
              empty["open_ms"], empty["wall_ms"], empty["index_bytes"], empty["index_bytes_per_tb"] / 2**30,
              empty["rss_delta_kib"], empty["rss_delta_trimmed_kib"], fig["rss_delta_on_open_trimmed_per_tb"] / 2**30))
    if jour and half:
        fig.update({
            "journal_writes": jour["writes"],
            "journal_blocks_used": jour["journal_blocks_used"],
            "open_ms_journal_half": half["open_ms"],
            "wall_ms_journal_half": half["wall_ms"],
        })
        print("  journal %d of %d blocks used (%d 4 KiB writes at QD1, one record a block): open_ms %d (wall %.0f ms)" % (
            jour["journal_blocks_used"], jour["journal_blocks"], jour["writes"], half["open_ms"], half["wall_ms"]))
    if scale != 1.0:
        fig["extrapolated_to_90pct"] = {
            "open_ms_journal_empty": round(empty["open_ms"] * scale),
            "open_ms_journal_half": round(half["open_ms"] * scale) if half else None,
            "how": "linear in the data filled (the checkpoint grows with the objects); the journal part does not scale",
        }
        print("  the fill stopped at %.1f%%: extrapolated linearly to 90%%: journal empty %d ms%s" % (
            100 * fill["used_fraction"], empty["open_ms"] * scale,
            ", half-full journal at most %d ms" % (half["open_ms"] * scale) if half else ""))
    extra["open_time"] = fig
elif os.path.exists(os.path.join(work, "open-fill.json")):
    bad.append("open time figures incomplete")

os.makedirs(os.path.dirname(out_path), exist_ok=True)
with open(out_path, "w") as f:
    json.dump(rows, f, indent=2)
with open(extra_path, "w") as f:
    json.dump(extra, f, indent=2)
with open(os.path.join(work, "misses.txt"), "w") as f:
    f.writelines("%s %s\n" % m for m in misses)
print("\nwrote %s and %s" % (out_path, extra_path))
if misses:
    print("MISSED: " + ", ".join("%s %s" % m for m in misses))
if bad:
    print("FAILED: " + "; ".join(bad))
sys.exit(1 if bad else 0)
