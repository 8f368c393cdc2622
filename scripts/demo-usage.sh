#!/usr/bin/env bash
# demo-usage.sh DIR: prints how to use the image of the cluster in DIR.
set -eu
. "$1/cluster.env"
cat <<MSG

The image rbd/vm1 is served over NBD:
  TCP:          $NBD_URI
  unix socket:  $NBD_UNIX_URI

Use it:
  . ${ATLANT_DIR}/cluster.env                       # ATLANT_MON, NBD_URI, PIDs, restart commands
  qemu-img info '$NBD_URI'
  qemu-img convert -n -p -f qcow2 -O raw debian.qcow2 '$NBD_URI'    # copy a disk image in
  qemu-system-x86_64 -m 1G -drive file='$NBD_URI',format=raw,if=virtio,cache=none
  nbdinfo '$NBD_URI'
  $ATLANT status                 # health, OSDs, PGs
  $ATLANT image create rbd/vm2 --size 10G    # then export name rbd/vm2
  $ATLANT dev down --dir $ATLANT_DIR         # stop (data kept); 'make demo' starts it again
MSG
