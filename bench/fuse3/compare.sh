#!/bin/bash
# The bare in-memory filesystem (bench/barerw.ts) on blobdisk's libfuse 3 binding against the
# same filesystem on fuse-native, interleaved round by round (the machine is shared and
# noisy): fio 4k randread and randwrite (O_DIRECT, psync, 1 and 4 jobs) and dd bs=1M
# sequential write and read of a 256 MiB file. Prints every run and then median [min–max]
# per figure, and the filesystem process's CPU per 4k request (1 job). Root, /dev/fuse; run
# after `npm run build` (and npm install, for the addon).
#   bash bench/fuse3/compare.sh [rounds=3] [seconds per fio job=5] [bindings="fuse-native fuse3 fuse3wb"]
set -u
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${1:-3}; T=${2:-5}; BINDINGS=${3:-"fuse-native fuse3"}
WORK=$(mktemp -d); PID=""
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID"; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/mnt"
head -c 268435456 /dev/urandom > "$WORK/data.bin"
fiojob() { fio --name=j --filename="$1" --rw="$2" --bs=4k --direct=1 --ioengine=psync --numjobs="$3" --group_reporting \
  --time_based --runtime="$T" --size=256M --output-format=json 2>/dev/null |
  python3 -c "import json,sys;d=json.load(sys.stdin)['jobs'][0];print(round(d['read']['iops']+d['write']['iops']))"; }
# dd prints bytes and seconds; MB/s from those, whatever unit dd chose.
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ddrate() { tail -1 | awk '{printf "%d\n", $1/$(NF-3)/1e6}'; }
for round in $(seq 1 "$ROUNDS"); do
  for b in $BINDINGS; do
    case $b in
      fuse-native) env=(BAREFS_BINDING=fuse-native) ;;
      fuse3) env=(BAREFS_BINDING=fuse3) ;;
      fuse3wb) env=(BAREFS_BINDING=fuse3 BAREFS_WRITEBACK=1) ;;
    esac
    : > "$WORK/err"
    env "${env[@]}" node "$ROOT/dist/bench/barerw.js" "$WORK/mnt" disk.img="$WORK/data.bin" 2>"$WORK/err" & PID=$!
    for _ in $(seq 1 100); do grep -q mounted "$WORK/err" && break; sleep 0.1; done
    f="$WORK/mnt/disk.img"
    # CPU of the filesystem process (utime+stime, clock ticks) per 4k request of the 1-job runs.
    c0=$(cpu $PID); rr1=$(fiojob "$f" randread 1); c1=$(cpu $PID); rr4=$(fiojob "$f" randread 4)
    c2=$(cpu $PID); rw1=$(fiojob "$f" randwrite 1); c3=$(cpu $PID); rw4=$(fiojob "$f" randwrite 4)
    usrr=$(( (c1 - c0) * 1000000 / HZ / (rr1 * T + 1) )); usrw=$(( (c3 - c2) * 1000000 / HZ / (rw1 * T + 1) ))
    sw=$(dd if="$WORK/data.bin" of="$f" bs=1M conv=notrunc 2>&1 | ddrate)
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
    sr=$(dd if="$f" of=/dev/null bs=1M 2>&1 | ddrate)
    echo "round=$round binding=$b randread1=$rr1 randread4=$rr4 randwrite1=$rw1 randwrite4=$rw4 seqwrite=$sw seqread=$sr cpu_us_per_read1=$usrr cpu_us_per_write1=$usrw"
    kill -TERM $PID; wait $PID; PID=""
  done
done | tee "$WORK/runs"
python3 - "$WORK/runs" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    kv = dict(p.split('=') for p in line.split())
    for k, v in kv.items():
        if k not in ('round', 'binding'): runs[kv['binding']][k].append(int(v))
print('figure (IOPS; MB/s for seq) ' + ' '.join(f'{b:>24}' for b in runs))
for k in next(iter(runs.values())):
    cells = [f"{statistics.median(r[k]):>8.0f} [{min(r[k])}-{max(r[k])}]" for r in runs.values()]
    print(f'{k:<28} ' + ' '.join(f'{c:>24}' for c in cells))
PY
