#!/usr/bin/env bash
# Network diagnostics overhead: what netdiag costs on loopback bulk traffic.
#
#  1. A Go sender/receiver moving BYTES (default 1 GiB) in 1 MiB messages,
#     each acknowledged with a netdiag.Ack, with the sender's connection
#     unmonitored, monitored with netdiag.DefaultConfig, and monitored with
#     every write kernel-timestamped; "off-again" repeats "off" to show the
#     noise floor. Modes are interleaved, order rotated each run; medians
#     of RUNS runs. Then the monitor's per-message bookkeeping alone (no
#     data moved), which, unlike the stream, this noisy machine can resolve.
#  2. iperf3 through `holdfast netdiag proxy`, plain (--no-measure) against
#     measuring (defaults), with the proxy process's CPU time per GiB.
#
# Usage: bench/netdiag/run.sh            (from the repository root)
#        RUNS=21 BYTES=$((1<<30)) IPERF_RUNS=5 IPERF_SECONDS=3 bench/netdiag/run.sh
set -euo pipefail

RUNS=${RUNS:-21}
BYTES=${BYTES:-$((1 << 30))}
IPERF_RUNS=${IPERF_RUNS:-5}
IPERF_SECONDS=${IPERF_SECONDS:-3}

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
echo "# netdiag overhead  $(date -u +%Y-%m-%dT%H:%MZ)  $(uname -r)  $(nproc) CPUs  $(go version | cut -d' ' -f3)"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

go build -o "$tmp/stream" ./bench/netdiag/stream
if ! go build -o "$tmp/holdfast" ./cmd/holdfast 2>"$tmp/build.log"; then
	# The working tree may hold someone's unfinished change: build HEAD.
	echo "# working tree does not build ($(head -1 "$tmp/build.log")); building HEAD" >&2
	mkdir "$tmp/src"
	git archive HEAD | tar -x -C "$tmp/src"
	(cd "$tmp/src" && go build -o "$tmp/holdfast" ./cmd/holdfast)
fi

echo
echo "## 1. loopback message stream, $((BYTES >> 20)) MiB per run, 1 MiB messages, $RUNS runs per mode"
"$tmp/stream" -runs "$RUNS" -bytes "$BYTES" -modes off,default,every-write,off-again | sed -n '/^$/,$p'

if ! command -v iperf3 >/dev/null; then
	echo "iperf3 not installed: skipping part 2" >&2
	exit 0
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cpu_ticks PID: user+system clock ticks of a process.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

sport=$(free_port)
iperf3 -s -B 127.0.0.1 -p "$sport" >/dev/null 2>&1 &
pids+=($!)

declare -A pport ppid
for mode in plain measure; do
	port=$(free_port)
	flags=()
	[ "$mode" = plain ] && flags=(--no-measure)
	"$tmp/holdfast" --log-level warn netdiag proxy --listen "127.0.0.1:$port" --to "127.0.0.1:$sport" \
		--dir "$tmp/log-$mode" "${flags[@]}" &
	ppid[$mode]=$!
	pids+=($!)
	pport[$mode]=$port
done
for p in "$sport" "${pport[plain]}" "${pport[measure]}"; do
	for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done

: >"$tmp/iperf.txt"
modes=(direct plain measure)
for r in $(seq "$IPERF_RUNS"); do
	for i in 0 1 2; do
		mode=${modes[$(((i + r) % 3))]}
		port=$sport
		[ "$mode" != direct ] && port=${pport[$mode]}
		before=0
		[ "$mode" != direct ] && before=$(cpu_ticks "${ppid[$mode]}")
		out=$(iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECONDS" -J)
		after=0
		[ "$mode" != direct ] && after=$(cpu_ticks "${ppid[$mode]}")
		read -r bps bytes < <(python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]; print(e["sum_received"]["bits_per_second"], e["sum_received"]["bytes"])' <<<"$out")
		cpu_per_gib=$(awk -v t=$((after - before)) -v hz="$hz" -v b="$bytes" 'BEGIN{printf "%.3f", (t/hz)/(b/2^30)}')
		printf 'run %d %-8s %8.2f Gbit/s  proxy CPU %s s/GiB\n' "$r" "$mode" "$(awk -v x="$bps" 'BEGIN{print x/1e9}')" "$cpu_per_gib"
		echo "$mode $bps $cpu_per_gib" >>"$tmp/iperf.txt"
	done
done

echo
echo "## 2. iperf3 -t $IPERF_SECONDS through holdfast netdiag proxy, $IPERF_RUNS runs per mode"
python3 - "$tmp/iperf.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, bps, cpu = line.split()
    rows.setdefault(m, []).append((float(bps), float(cpu)))
med = {m: (statistics.median(b for b, _ in v), statistics.median(c for _, c in v)) for m, v in rows.items()}
print(f"{'mode':<10}{'Gbit/s p50':>12}{'vs plain':>10}{'proxy CPU s/GiB p50':>22}{'vs plain':>10}")
for m in ("direct", "plain", "measure"):
    b, c = med[m]
    rb = f"{b / med['plain'][0]:.3f}" if m == "measure" else "-"
    rc = f"{c / med['plain'][1]:.3f}" if m == "measure" else "-"
    cs = f"{c:.3f}" if m != "direct" else "-"
    print(f"{m:<10}{b / 1e9:>12.2f}{rb:>10}{cs:>22}{rc:>10}")
PY
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
