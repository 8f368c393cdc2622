#!/usr/bin/env bash
# The walking-skeleton acceptance test, on real processes: a 3-monitor, 3-OSD cluster
# started by `atlant dev up`, checked with real clients:
#   - nbd-conformance (TCP and unix socket) with no FAIL;
#   - qemu-img convert of a 256 MiB random file into an image, then qemu-img compare;
#   - fio --ioengine=nbd with verify=crc32c, zero errors;
#   - every object on exactly 3 distinct OSDs at one version (`atlant debug check-replicas`);
#   - vm-boot-test --reboot: a qemu guest boots with the image as its virtio disk;
#   - stop (SIGTERM) and restart every process, then kill -9 every process and restart:
#     the data is still there and verifies each time.
# Prints PASS/FAIL per check and ends with "N passed, N failed".
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$(cd "$ROOT/../shared/tools" && pwd)
BIN=$ROOT/target/release
ATLANT=$BIN/atlant
WORK=$(mktemp -d /tmp/atlant-skeleton.XXXXXX)
DIR=$WORK/cluster
passed=0
failed=0

log() { echo "[$(date +%H:%M:%S)] $*"; }
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
# check NAME CMD...: runs CMD with its output in $WORK/NAME.log; PASS if it exits 0.
check() {
  local name=$1; shift
  local t0=$SECONDS
  if "$@" > "$WORK/$name.log" 2>&1; then
    pass "$name ($((SECONDS - t0))s)"
  else
    fail "$name ($((SECONDS - t0))s): see $WORK/$name.log"; tail -20 "$WORK/$name.log" | sed 's/^/    /'
  fi
}

cleanup() {
  [ -f "$DIR/cluster.json" ] && "$ATLANT" dev down --dir "$DIR" > /dev/null 2>&1
  if [ "$failed" = 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK (daemon logs in $DIR/log)"; fi
}
trap cleanup EXIT

log "starting cluster in $DIR"
if ! "$ATLANT" dev up --dir "$DIR" --osds 3 --osd-size 4G --image-size 2G > "$WORK/dev-up.log" 2>&1; then
  cat "$WORK/dev-up.log"; fail "dev-up"; echo "$passed passed, $failed failed"; exit 1
fi
pass "dev-up"
. "$DIR/cluster.env"
export ATLANT_MON

check status-json bash -c '"$0" status --format json | python3 -c "
import json,sys; s=json.load(sys.stdin)
assert s[\"health\"][\"status\"]==\"HEALTH_OK\", s[\"health\"]
assert s[\"osds\"]==dict(total=3,up=3,**{\"in\":3}), s[\"osds\"]
assert s[\"pgs\"][\"total\"]==s[\"pgs\"].get(\"active+clean\"), s[\"pgs\"]
assert len(s[\"mons\"])==3 and all(m[\"in_quorum\"] for m in s[\"mons\"]), s[\"mons\"]
assert sum(1 for m in s[\"mons\"] if m[\"leader\"])==1, s[\"mons\"]
assert [i[\"name\"] for i in s[\"images\"]]==[\"vm1\"] and s[\"epoch\"]>0
"' "$ATLANT"

check conformance-tcp "$TOOLS/nbd-conformance" "$NBD_URI"
check conformance-unix "$TOOLS/nbd-conformance" --seed 7 "$NBD_UNIX_URI"

# qemu-img: a 256 MiB random file into its own image, compared byte for byte.
"$ATLANT" image create rbd/qimg --size 256M > /dev/null
QIMG="nbd://${NBD_URI#nbd://}"; QIMG="${QIMG%/rbd/vm1}/rbd/qimg"
head -c 256M /dev/urandom > "$WORK/random.raw"
check qemu-img-convert qemu-img convert -n -f raw -O raw "$WORK/random.raw" "$QIMG"
check qemu-img-compare qemu-img compare -f raw -F raw "$WORK/random.raw" "$QIMG"

# fio with crc32c verification (writes, then reads everything back and checks).
"$ATLANT" image create rbd/fio --size 512M > /dev/null
FIOURI="${NBD_URI%/rbd/vm1}/rbd/fio"
fio_verify() {
  fio --name=verify --ioengine=nbd --uri="$FIOURI" --size=128m --bs=4k --rw=randwrite --iodepth=16 \
      --randseed=4242 --verify=crc32c --verify_backlog=512 --do_verify=1 --output-format=json \
      --output="$WORK/fio.json" "$@" &&
  python3 - "$WORK/fio.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
errs = sum(job["error"] for job in j["jobs"])
w = sum(job["write"]["io_bytes"] for job in j["jobs"]); r = sum(job["read"]["io_bytes"] for job in j["jobs"])
print(f"fio: error={errs} write_bytes={w} read_bytes={r}")
# Every written block must have been read back and verified.
sys.exit(1 if errs or r < 128 << 20 else 0)
PY
}
check fio-verify fio_verify
fio_verify_only() { fio_verify --verify_only; }

check replicas-on-3-osds bash -c '"$0" debug check-replicas --format json | tee /dev/stderr | python3 -c "
import json,sys; r=json.load(sys.stdin); assert r[\"ok\"] and r[\"objects\"]>0, r"' "$ATLANT"

# A guest boots from the image (TCG), writes and verifies data, then a second boot finds it.
check vm-boot-reboot "$TOOLS/vm-boot-test" --reboot "$NBD_URI"
digest=$(grep -o 'digest=[0-9a-f]*' "$WORK/vm-boot-reboot.log" | tail -1 | cut -d= -f2)

verify_all() {
  local tag=$1
  check "$tag-qemu-img-compare" qemu-img compare -f raw -F raw "$WORK/random.raw" "$QIMG"
  check "$tag-fio-verify-only" fio_verify_only
  check "$tag-replicas" bash -c '"$0" debug check-replicas > /dev/null' "$ATLANT"
  if [ -n "$digest" ]; then
    check "$tag-vm-verify" "$TOOLS/vm-boot-test" --verify "$digest" "$NBD_URI"
  else
    fail "$tag-vm-verify: no digest from the first VM run"
  fi
}

log "graceful restart of every process"
check dev-down "$ATLANT" dev down --dir "$DIR"
check dev-up-again "$ATLANT" dev up --dir "$DIR"
. "$DIR/cluster.env"
verify_all restart

log "kill -9 of every process, then start again"
for kv in "nbd=$NBD_PID" $OSD_PIDS $MON_PIDS; do kill -9 "${kv#*=}" 2>/dev/null; done
sleep 1
check dev-up-after-kill "$ATLANT" dev up --dir "$DIR"
. "$DIR/cluster.env"
verify_all crash

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
