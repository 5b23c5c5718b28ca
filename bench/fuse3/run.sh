#!/bin/bash
# Interleaved, 3 rounds: the bare fuse-native filesystem (dist/bench/barerw.js) against the
# C libfuse3 memory filesystem, multi-threaded and single-threaded (-s), the same fio jobs
# and dd on a 256 MiB file. Root, /dev/fuse, libfuse3-dev; run after `npm run build`.
# The C filesystem runs in the foreground and is unmounted with umount (no fusermount3 needed).

HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d); trap 'umount $WORK/f3 2>/dev/null; fusermount -u -z $WORK/fn 2>/dev/null; rm -rf $WORK' EXIT
mkdir -p $WORK/fn $WORK/f3; cd $WORK
gcc -O2 -o memfs3 "$HERE/memfs3.c" $(pkg-config --cflags --libs fuse3) || exit 1
head -c 268435456 /dev/urandom > data.bin
T=${T:-5}
fiojob() { fio --name=j --filename=$1 --rw=$2 --bs=4k --direct=1 --ioengine=psync --numjobs=$3 --group_reporting --time_based --runtime=$T --size=256M --output-format=json 2>/dev/null | python3 -c "import json,sys;d=json.load(sys.stdin)['jobs'][0];print(round(d['read']['iops']+d['write']['iops']))"; }
ddr() { dd if=$1 of=/dev/null bs=1M 2>&1 | tail -1 | awk '{print $(NF-1)}'; }
ddw() { dd if=$WORK/data.bin of=$1 bs=1M conv=notrunc 2>&1 | tail -1 | awk '{print $(NF-1)}'; }
measure() { # name file pid
  c0=$(awk '{print $14+$15}' /proc/$3/stat)
  rr1=$(fiojob $2 randread 1); c1=$(awk '{print $14+$15}' /proc/$3/stat)
  rr4=$(fiojob $2 randread 4)
  c2=$(awk '{print $14+$15}' /proc/$3/stat)
  rw1=$(fiojob $2 randwrite 1); c3=$(awk '{print $14+$15}' /proc/$3/stat)
  sr=$(ddr $2); sw=$(ddw $2)
  echo "$1 rr1=$rr1 rr4=$rr4 rw1=$rw1 seqread=$sr seqwrite=$sw cpu_rr1_ticks=$((c1-c0)) cpu_rw1_ticks=$((c3-c2))"
}
for round in 1 2 3; do
  for fs in fn f3mt f3st; do
    if [ $fs = fn ]; then
      node $ROOT/dist/bench/barerw.js $WORK/fn disk.img=$WORK/data.bin 2>$WORK/fn.err & pid=$!
      while ! grep -q mounted $WORK/fn.err; do sleep 0.2; done
      measure fn $WORK/fn/disk.img $pid; kill -TERM $pid; wait $pid
    else
      opt=""; [ $fs = f3st ] && opt="-s"
      MEMFS_DATA=$WORK/data.bin ./memfs3 -f $opt $WORK/f3 & pid=$!
      while ! grep -q " $WORK/f3 " /proc/self/mountinfo; do sleep 0.1; done
      measure $fs $WORK/f3/disk.img $pid; umount $WORK/f3; wait $pid
    fi
  done
done
