#!/usr/bin/env bash
# Store benchmark: the object store alone (osd/examples/store_bench.rs, no network, no
# replication) beside fio with the same pattern and the same durability, on the same file
# or device, in the same run. Each job runs fio and then the store back to back:
#   file   a fully written file on this machine's disk (FILE_SIZE, default 1g)
#   loop   a loop device (direct-io=on) over a fully written file (LOOP_SIZE, default 512m);
#          skipped with a note when losetup is not available
# fio: ioengine=$FIO_ENGINE (io_uring), direct=1, and sync=dsync for writes when the store
# runs in immediate mode (each write durable on completion, as the store's are); it covers
# the whole file or device. The store is formatted before each job and its working set
# (75% of the data capacity: 128 KiB objects for 4 KiB jobs, 1 MiB objects for 1 MiB jobs)
# is written whole before the clock starts, so reads hit data and writes overwrite it.
# Both run RAMP (1 s) unmeasured, then RUNTIME (5 s).
#
# Then three figures:
#   wa     write amplification on the loop device: its own counters (/sys/block/loopN/stat)
#          around 4 KiB random writes at QD32 totalling twice the device size, on a store
#          filled to 90% (and a short QD1 run for comparison)
#   index  index RAM per TB of data: a store (INDEX_SIZE, 1g) filled completely with 128 KiB
#          objects, Store::index_bytes and the RSS a fresh open adds
#   open   open time of a BIG_SIZE (8g) sparse-file store filled to 90% with 128 KiB objects
#          (at most FILL_SECONDS, then extrapolated), with an empty journal and with a
#          journal just under half full (where a checkpoint would start)
# Prints one table (job, target, engine, IOPS, MiB/s, mean, p99, store/fio, CPU µs/op,
# PASS/MISS against: 4 KiB random QD32 IOPS >= 0.8x fio; QD1 mean <= fio's + 15 µs), writes
# target/bench/store.json (rows) and target/bench/store-extra.json (figures), then profiles
# (perf record) the store on every missed target. Exits 1 if a job failed, not on a MISS.
# Env: RUNTIME RAMP FILE_SIZE LOOP_SIZE INDEX_SIZE BIG_SIZE FILL_SECONDS DURABILITY
# (immediate|lazy) STORE_IO (best|file|uring) FIO_ENGINE TARGETS ("file loop") EXTRAS
# ("wa index open") JOBS PROFILE_MISSES (1).
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/target/release/examples/store_bench
OUT=$ROOT/target/bench
WORK=$OUT/store-work
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
FILE_SIZE=${FILE_SIZE:-1g}
LOOP_SIZE=${LOOP_SIZE:-512m}
INDEX_SIZE=${INDEX_SIZE:-1g}
BIG_SIZE=${BIG_SIZE:-8g}
FILL_SECONDS=${FILL_SECONDS:-110}
DURABILITY=${DURABILITY:-immediate}
STORE_IO=${STORE_IO:-best}
FIO_ENGINE=${FIO_ENGINE:-io_uring}
TARGETS=${TARGETS:-"file loop"}
EXTRAS=${EXTRAS:-"wa index open"}
JOBS=${JOBS:-"randwrite-4k-qd1 randwrite-4k-qd32 randread-4k-qd1 randread-4k-qd32 seqwrite-1m-qd8 seqread-1m-qd8"}
PROFILE_MISSES=${PROFILE_MISSES:-1}

[ -x "$BENCH" ] || { echo "missing $BENCH: cargo build --release -p atlant-osd --examples" >&2; exit 2; }
command -v fio > /dev/null || { echo "fio is not installed (make deps)" >&2; exit 2; }

bytes() { # 512m, 1g, 4096 -> bytes
  local v=${1,,}
  case $v in
    *k) echo $(( ${v%k} << 10 )) ;; *m) echo $(( ${v%m} << 20 )) ;;
    *g) echo $(( ${v%g} << 30 )) ;; *t) echo $(( ${v%t} << 40 )) ;; *) echo "$v" ;;
  esac
}

rm -rf "$WORK"; mkdir -p "$WORK"
LOOP=""
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2> /dev/null
  rm -f "$WORK"/*.raw
}
trap cleanup EXIT
failed=0

# Writes a file whole (so neither engine pays for block allocation in the filesystem).
write_whole() { # PATH BYTES
  fio --name=prefill --filename="$1" --size="$2" --rw=write --bs=1m --direct=1 --ioengine="$FIO_ENGINE" \
      --iodepth=8 --end_fsync=1 > /dev/null 2>&1
}

fio_job() { # DEVICE BYTES JOB OUT
  local dev=$1 size=$2 job=$3 out=$4 a sync=()
  case $job in
    randwrite-4k-qd*) a=(--rw=randwrite --bs=4k) ;; randread-4k-qd*) a=(--rw=randread --bs=4k) ;;
    seqwrite-1m-qd*) a=(--rw=write --bs=1m) ;; seqread-1m-qd*) a=(--rw=read --bs=1m) ;;
    *) echo "unknown job $job" >&2; return 2 ;;
  esac
  [ "$DURABILITY" = immediate ] && [[ $job == *write* ]] && sync=(--sync=dsync)
  fio --name="$job" --filename="$dev" --size="$size" --ioengine="$FIO_ENGINE" --direct=1 "${sync[@]}" \
      --iodepth="${job##*-qd}" "${a[@]}" --numjobs=1 --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
      --randrepeat=0 --norandommap --lat_percentiles=1 --percentile_list=50:99 \
      --output-format=json --output="$out" > /dev/null 2> "$out.err"
}

store_job() { # DEVICE JOB OUT
  local job=$2
  "$BENCH" --device "$1" --format --job "${job%-qd*}" --qd "${job##*-qd}" --seconds "$RUNTIME" \
      --ramp-seconds "$RAMP" --durability "$DURABILITY" --io "$STORE_IO" > "$3" 2> "$3.err"
}

run_target() { # NAME DEVICE BYTES
  local name=$1 dev=$2 size=$3
  mkdir -p "$WORK/$name"
  for job in $JOBS; do
    printf '  %-5s %-18s fio ...' "$name" "$job"
    fio_job "$dev" "$size" "$job" "$WORK/$name/fio-$job.json" || { echo " FAILED"; cat "$WORK/$name/fio-$job.json.err"; failed=1; }
    printf ' store ...'
    if store_job "$dev" "$job" "$WORK/$name/store-$job.json"; then echo " done"; else
      echo " FAILED"; tail -5 "$WORK/$name/store-$job.json.err"; failed=1
    fi
  done
}

sectors_written() { awk '{print $5, $7}' "/sys/block/$(basename "$1")/stat"; } # write IOs, sectors

echo "== store benchmark: RUNTIME=${RUNTIME}s RAMP=${RAMP}s durability=$DURABILITY store io=$STORE_IO fio=$FIO_ENGINE"
echo "   $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine skews both engines alike)"
echo "$(cut -d' ' -f1-3 /proc/loadavg)" > "$WORK/loadavg-start"
for t in $TARGETS; do
  case $t in
    file)
      FILE_BYTES=$(bytes "$FILE_SIZE")
      echo "== target file: $WORK/file.raw ($FILE_BYTES bytes, fully written)"
      write_whole "$WORK/file.raw" "$FILE_BYTES"
      run_target file "$WORK/file.raw" "$FILE_BYTES"
      ;;
    loop)
      LOOP_BYTES=$(bytes "$LOOP_SIZE")
      write_whole "$WORK/loop.raw" "$LOOP_BYTES"
      if ! LOOP=$(losetup --find --show --direct-io=on "$WORK/loop.raw" 2> "$WORK/losetup.err"); then
        LOOP=""
        echo "== target loop: SKIPPED, losetup failed: $(cat "$WORK/losetup.err")" | tee "$WORK/loop-skipped"
        continue
      fi
      echo "== target loop: $LOOP over $WORK/loop.raw ($LOOP_BYTES bytes, direct-io=$(cat "/sys/block/$(basename "$LOOP")/loop/dio" 2> /dev/null))"
      run_target loop "$LOOP" "$LOOP_BYTES"
      ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

for x in $EXTRAS; do
  case $x in
    wa)
      if [ -z "$LOOP" ]; then
        LOOP_BYTES=$(bytes "$LOOP_SIZE")
        write_whole "$WORK/loop.raw" "$LOOP_BYTES"
        LOOP=$(losetup --find --show --direct-io=on "$WORK/loop.raw" 2> /dev/null) || LOOP=""
      fi
      if [ -z "$LOOP" ]; then echo "== write amplification: SKIPPED (no loop device)" | tee "$WORK/wa-skipped"; continue; fi
      echo "== write amplification on $LOOP: fill to 90%, then 4 KiB random writes at QD32 of $((2 * LOOP_BYTES)) bytes"
      "$BENCH" --mode fill --format --device "$LOOP" --fill-fraction 0.9 --durability "$DURABILITY" --io "$STORE_IO" \
          > "$WORK/wa-fill.json" 2> "$WORK/wa-fill.err" || { tail -5 "$WORK/wa-fill.err"; failed=1; continue; }
      for qd in 32 1; do
        if [ $qd = 32 ]; then n=$((2 * LOOP_BYTES)); else n=$((64 << 20)); fi
        before=$(sectors_written "$LOOP")
        "$BENCH" --device "$LOOP" --job randwrite-4k --qd $qd --bytes $n --working-set 0.85 \
            --durability "$DURABILITY" --io "$STORE_IO" > "$WORK/wa-run-qd$qd.json" 2> "$WORK/wa-run-qd$qd.err" \
            || { tail -5 "$WORK/wa-run-qd$qd.err"; failed=1; continue; }
        after=$(sectors_written "$LOOP")
        echo "{\"qd\": $qd, \"device_bytes\": $LOOP_BYTES, \"before\": [${before/ /, }], \"after\": [${after/ /, }]}" \
            > "$WORK/wa-qd$qd.json"
      done
      ;;
    index)
      INDEX_BYTES=$(bytes "$INDEX_SIZE")
      echo "== index RAM: $INDEX_BYTES-byte store filled completely with 128 KiB objects"
      truncate -s "$INDEX_BYTES" "$WORK/index.raw"
      "$BENCH" --mode fill --format --device "$WORK/index.raw" --fill-fraction 1.0 --io "$STORE_IO" \
          > "$WORK/index-fill.json" 2> "$WORK/index-fill.err" || { tail -5 "$WORK/index-fill.err"; failed=1; continue; }
      "$BENCH" --mode open --device "$WORK/index.raw" --io "$STORE_IO" > "$WORK/index-open.json" 2> "$WORK/index-open.err" \
          || { tail -5 "$WORK/index-open.err"; failed=1; }
      rm -f "$WORK/index.raw"
      ;;
    open)
      BIG_BYTES=$(bytes "$BIG_SIZE")
      echo "== open time: $BIG_BYTES-byte sparse file, fill to 90% with 128 KiB objects (at most ${FILL_SECONDS}s)"
      truncate -s "$BIG_BYTES" "$WORK/big.raw"
      "$BENCH" --mode fill --format --device "$WORK/big.raw" --fill-fraction 0.9 --max-seconds "$FILL_SECONDS" \
          --durability "$DURABILITY" --io "$STORE_IO" > "$WORK/open-fill.json" 2> "$WORK/open-fill.err" \
          || { tail -5 "$WORK/open-fill.err"; failed=1; rm -f "$WORK/big.raw"; continue; }
      echo "   filled: $(cat "$WORK/open-fill.json")"
      echo "   reopen (journal empty), then 4 KiB writes at QD1 until the journal is just under half full, reopen"
      "$BENCH" --mode open --device "$WORK/big.raw" --io "$STORE_IO" > "$WORK/open-empty.json" 2> "$WORK/open-empty.err" \
          && "$BENCH" --mode journal --device "$WORK/big.raw" --io "$STORE_IO" > "$WORK/open-journal.json" 2> "$WORK/open-journal.err" \
          && "$BENCH" --mode open --device "$WORK/big.raw" --io "$STORE_IO" > "$WORK/open-half.json" 2> "$WORK/open-half.err" \
          || { tail -5 "$WORK"/open-*.err; failed=1; }
      rm -f "$WORK/big.raw"
      ;;
    *) echo "unknown extra $x" >&2; exit 2 ;;
  esac
done

python3 "$ROOT/bench/store_report.py" "$WORK" "$OUT/store.json" "$OUT/store-extra.json" || failed=1

# Where the time goes on every missed target: a flat profile of the store running that job.
if [ "$PROFILE_MISSES" = 1 ] && [ -s "$WORK/misses.txt" ] && command -v perf > /dev/null; then
  while read -r t job; do
    case $t in file) dev=$WORK/file.raw ;; loop) dev=$LOOP ;; *) continue ;; esac
    [ -e "$dev" ] || continue
    echo
    echo "== profile: store $job on $t (MISS), perf record -F 999 over ${RUNTIME}s"
    perf record -F 999 -o "$WORK/perf-$t-$job.data" -- "$BENCH" --device "$dev" --format --job "${job%-qd*}" \
        --qd "${job##*-qd}" --seconds "$RUNTIME" --ramp-seconds "$RAMP" --durability "$DURABILITY" --io "$STORE_IO" \
        > "$WORK/perf-$t-$job.json" 2> "$WORK/perf-$t-$job.err" < /dev/null
    echo "   run under perf: $(cat "$WORK/perf-$t-$job.json")"
    echo "   -- samples by thread (tokio workers, io_uring ring thread, loop kworkers are not in this process)"
    perf report -i "$WORK/perf-$t-$job.data" --stdio --sort comm 2> /dev/null < /dev/null | grep -v '^#' | grep -v '^$' | head -6
    echo "   -- samples by binary (kernel, store, libc)"
    perf report -i "$WORK/perf-$t-$job.data" --stdio --sort dso 2> /dev/null < /dev/null | grep -v '^#' | grep -v '^$' | head -6
    echo "   -- top symbols"
    perf report -i "$WORK/perf-$t-$job.data" --stdio --sort dso,sym 2> /dev/null < /dev/null | grep -v '^#' | grep -v '^$' | head -30
  done < "$WORK/misses.txt"
fi
exit $failed
