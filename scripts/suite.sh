#!/usr/bin/env bash
# suite.sh NAME CMD...: runs one test suite, prints its wall time, and records the result
# in target/suites.log so `make test` can print a summary of every suite at the end.
set -u
name=$1; shift
mkdir -p target
start=$(date +%s.%N)
echo "==> suite $name: $*"
"$@"
rc=$?
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
result=$([ $rc = 0 ] && echo PASS || echo FAIL)
echo "==> suite $name: $result in ${secs}s"
printf '%-24s %s %8ss\n' "$name" "$result" "$secs" >> target/suites.log
exit $rc
