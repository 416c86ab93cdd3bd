#!/usr/bin/env bash
# Network diagnostics overhead, end to end: `holdfast cp` of a file over
# loopback with its netdiag recording on (the default: every message's send
# and acknowledgement times, kernel timestamps of sampled writes, TCP_INFO
# every 100 ms, written to <state>/netdiag) against --no-netdiag. Modes
# alternate, order flipped each run; the figure is the median of the
# per-run paired ratios of wall time and of CPU time (both processes).
#
# Usage: bench/netdiag/cp.sh   (RUNS=9 SIZE=2G; from the repository root)
set -euo pipefail
RUNS=${RUNS:-9}
SIZE=${SIZE:-2G}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
cd "$root"
echo "# holdfast cp with and without netdiag, loopback, $SIZE file, $RUNS runs  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git rev-parse --short HEAD)"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
go build -o "$tmp/holdfast" ./cmd/holdfast
hf="$tmp/holdfast"
"$hf" cluster init --state "$tmp/state" --name bench >/dev/null
mkdir -p "$tmp/recv"
head -c "$SIZE" /dev/urandom > "$tmp/src.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$hf" serve --state "$tmp/state" --listen 127.0.0.1:$port --root "$tmp/recv" 2>/dev/null &
spid=$!
pids+=($spid)
sleep 0.5
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
one() { # mode -> "seconds cpu_seconds"
	local flags=() s0 t0 t1 s1 c
	[ "$1" = off ] && flags=(--no-netdiag)
	rm -f "$tmp/recv/dst.bin"
	s0=$(ticks $spid); t0=$(date +%s.%N)
	/usr/bin/time -f '%U %S' -o "$tmp/time" "$hf" cp --state "$tmp/state" --no-progress "${flags[@]}" "$tmp/src.bin" 127.0.0.1:$port:/dst.bin >/dev/null
	t1=$(date +%s.%N); s1=$(ticks $spid)
	cmp -s "$tmp/src.bin" "$tmp/recv/dst.bin" || { echo "copy differs" >&2; exit 1; }
	c=$(awk '{print $1+$2}' "$tmp/time")
	python3 -c "import sys; print(float(sys.argv[2])-float(sys.argv[1]), float(sys.argv[3]) + (int(sys.argv[5])-int(sys.argv[4]))/int(sys.argv[6]))" "$t0" "$t1" "$c" "$s0" "$s1" "$hz"
}
one on >/dev/null # warm the page cache and the receiver
: > "$tmp/pairs"
for i in $(seq "$RUNS"); do
	if [ $((i % 2)) = 1 ]; then a=$(one off); b=$(one on); else b=$(one on); a=$(one off); fi
	echo "run $i: off $a  on $b" >&2
	echo "$a $b" >> "$tmp/pairs"
done
echo "# netdiag log after the runs: $(du -sh "$tmp/state/netdiag" | cut -f1)"
python3 - "$tmp/pairs" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
wall = [r[2] / r[0] for r in rows]
cpu = [r[3] / r[1] for r in rows]
q = lambda v: statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
print("| mode | median s | median CPU-s |")
print("|---|---|---|")
print("| --no-netdiag | %.2f | %.2f |" % (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)))
print("| netdiag on (default) | %.2f | %.2f |" % (statistics.median(r[2] for r in rows), statistics.median(r[3] for r in rows)))
print()
print("paired ratio on/off: wall time median %.3f (IQR %.3f-%.3f), CPU time median %.3f (IQR %.3f-%.3f)" % (
    statistics.median(wall), q(wall)[0], q(wall)[2], statistics.median(cpu), q(cpu)[0], q(cpu)[2]))
PY
