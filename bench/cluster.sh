#!/usr/bin/env bash
# Cluster benchmark: the shared fio matrix (../shared/tools/fio-nbd-bench) through Atlant's
# NBD gateway on a fresh local 3-OSD cluster, beside floors measured in the same run on the
# same disk:
#   file         fio, libaio, direct=1 on a raw file (no replication, not durable per write)
#   file-dsync   the same with sync=dsync (each write durable, as Atlant's are)
#   qemu-nbd     qemu-nbd serving a raw file (cache=none), through the same NBD client path
#   atlant       Atlant: NBD gateway → primary → 3 replicas, every write durable on ack
#   atlant-client  the same cluster through the client library (`atlant bench`), no NBD hop
# Prints one table and writes target/bench/cluster.json (rows: job, target, iops, mean_us,
# p99_us, mib_s). Env: RUNTIME (s per job, default 10), BENCH_SIZE (default 1g), TARGETS.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$(cd "$ROOT/../shared/tools" && pwd)
ATLANT=$ROOT/target/release/atlant
OUT=$ROOT/target/bench
RUNTIME=${RUNTIME:-10}
BENCH_SIZE=${BENCH_SIZE:-1g}
TARGETS=${TARGETS:-"file file-dsync qemu-nbd atlant"}
REPORT_TARGETS="$TARGETS"; case " $TARGETS " in *" atlant "*) REPORT_TARGETS="$TARGETS atlant-client" ;; esac
JOBS_ALL="randwrite-4k-qd1 randread-4k-qd1 randwrite-4k-qd32 randread-4k-qd32 seqwrite-1m-qd8 seqread-1m-qd8"
WORK=$OUT/cluster-work
rm -rf "$WORK"; mkdir -p "$WORK"
export RUNTIME BENCH_SIZE

pids=()
cleanup() {
  [ -f "$WORK/cluster/cluster.json" ] && "$ATLANT" dev down --dir "$WORK/cluster" > /dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  rm -f "$WORK"/*.raw
}
trap cleanup EXIT

fio_file() { # NAME [extra fio args]: the six jobs with libaio on a raw file
  local name=$1; shift
  local dir=$WORK/$name; mkdir -p "$dir"
  local f=$WORK/file.raw
  [ -f "$f" ] || fio --name=prefill --filename="$f" --size="$BENCH_SIZE" --rw=write --bs=1m --direct=1 --ioengine=libaio --iodepth=8 > /dev/null
  for job in $JOBS_ALL; do
    case $job in
      randwrite-4k-qd1) a=(--rw=randwrite --bs=4k --iodepth=1) ;; randread-4k-qd1) a=(--rw=randread --bs=4k --iodepth=1) ;;
      randwrite-4k-qd32) a=(--rw=randwrite --bs=4k --iodepth=32) ;; randread-4k-qd32) a=(--rw=randread --bs=4k --iodepth=32) ;;
      seqwrite-1m-qd8) a=(--rw=write --bs=1m --iodepth=8) ;; seqread-1m-qd8) a=(--rw=read --bs=1m --iodepth=8) ;;
    esac
    echo "  $name $job ..."
    fio --name="$job" --filename="$f" --size="$BENCH_SIZE" --ioengine=libaio --direct=1 --numjobs=1 --group_reporting \
        --lat_percentiles=1 --percentile_list=50:99:99.9 --randrepeat=0 --norandommap --time_based --runtime="$RUNTIME" \
        --output-format=json --output="$dir/$job.json" "${a[@]}" "$@" > /dev/null 2>&1
  done
}

for t in $TARGETS; do
  echo "== target $t"
  case $t in
    file) fio_file file ;;
    file-dsync) fio_file file-dsync --sync=dsync ;;
    qemu-nbd)
      truncate -s "$BENCH_SIZE" "$WORK/qnbd.raw"
      qemu-nbd -f raw -t -e 16 --cache=none --aio=native -x disk -k "$WORK/qnbd.sock" "$WORK/qnbd.raw" > "$WORK/qemu-nbd.log" 2>&1 &
      pids+=($!)
      for _ in $(seq 50); do [ -S "$WORK/qnbd.sock" ] && break; sleep 0.1; done
      OUT_DIR=$WORK/qemu-nbd "$TOOLS/fio-nbd-bench" "nbd+unix:///disk?socket=$WORK/qnbd.sock" "$WORK/qemu-nbd/summary.json" | tail -12
      ;;
    atlant)
      "$ATLANT" dev up --dir "$WORK/cluster" --osd-size 6G --image-size 2G > "$WORK/dev-up.log" 2>&1 || { cat "$WORK/dev-up.log"; exit 1; }
      . "$WORK/cluster/cluster.env"
      OUT_DIR=$WORK/atlant "$TOOLS/fio-nbd-bench" "$NBD_URI" "$WORK/atlant/summary.json" | tail -12
      # The same cluster through the client library directly: the NBD hop's share.
      mkdir -p "$WORK/atlant-client"
      for args in "--write --depth 1" "--depth 1" "--write --depth 32" "--depth 32" "--write --sequential --bs 1M --depth 8" "--sequential --bs 1M --depth 8"; do
        # shellcheck disable=SC2086
        "$ATLANT" bench rbd/vm1 $args --seconds "$RUNTIME" --region "$BENCH_SIZE" --format json >> "$WORK/atlant-client/rows.jsonl"
      done
      "$ATLANT" status
      # CPU seconds of the cluster's processes, for CPU per op.
      for kv in $OSD_PIDS "nbd=$NBD_PID"; do
        p=${kv#*=}; awk -v n="${kv%%=*}" '{print n, ($14+$15)/100}' "/proc/$p/stat"
      done > "$WORK/atlant/cpu.txt"
      ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

python3 "$ROOT/bench/report.py" "$WORK" "$OUT/cluster.json" $REPORT_TARGETS
