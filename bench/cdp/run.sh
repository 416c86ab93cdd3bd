#!/usr/bin/env bash
# bench/cdp/run.sh: CDP volumes against qemu-nbd serving a raw file, side by
# side in one run, all over unix sockets.
#
#   sudo bash bench/cdp/run.sh            (RUNS=3 RUNTIME=5 LAGTIME=20 by
#                                          default; ONLY_LAG=1 runs part 3
#                                          alone, SKIP_LAG=1 parts 1-2;
#                                          LOADS="label:bs:rate|..." sets
#                                          the lag loads, KEEP=1 keeps the
#                                          work directory)
#
# Part 1: fio (ioengine=nbd) 4 KiB random writes at QD1 and QD16 and 1 MiB
#         sequential writes, and qemu-img bench (4 KiB writes, QD16), against
#         a holdfast volume with CDP on, one with CDP off (--no-cdp), and
#         qemu-nbd serving a raw file. Medians of RUNS runs.
# Part 2: storage overhead of the CDP log per GiB written.
# Part 3: replication lag over a lab path (200 Mbit/s, 40 ms RTT; needs root
#         for the namespaces) under a sustained write load below capacity:
#         two `holdfast agent` processes, one per lab host, the log shipped
#         over their mTLS wire sessions.
set -euo pipefail
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-5}
LAGTIME=${LAGTIME:-20}
SIZE=1G
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/cdpbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for t in fio qemu-img qemu-nbd python3; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done

go build -o "$W/holdfast" "$ROOT/cmd/holdfast"
H="$W/holdfast"

if [ "${ONLY_LAG:-0}" != 1 ]; then
# --- servers -----------------------------------------------------------------
mkdir -p "$W/hf"
"$H" volume serve --state "$W/hf" --nbd-listen "" --log-level warn 2>"$W/hf.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$W/hf/agent.sock" ] && break; sleep 0.1; done
"$H" volume create cdp --size $SIZE --state "$W/hf" >/dev/null
"$H" volume create nocdp --size $SIZE --no-cdp --state "$W/hf" >/dev/null
truncate -s $SIZE "$W/raw.img"
qemu-nbd -f raw -k "$W/qnbd.sock" -t -e 8 --cache=writeback "$W/raw.img" &
PIDS+=($!)
for _ in $(seq 50); do [ -S "$W/qnbd.sock" ] && break; sleep 0.1; done

declare -A URI=(
	[holdfast-cdp]="nbd+unix:///cdp?socket=$W/hf/nbd.sock"
	[holdfast-nocdp]="nbd+unix:///nocdp?socket=$W/hf/nbd.sock"
	[qemu-nbd]="nbd+unix:///?socket=$W/qnbd.sock"
)
TARGETS=(holdfast-cdp holdfast-nocdp qemu-nbd)

# fio JOB TARGET -> "iops MiB/s p50_us"
fio_run() {
	local job=$1 target=$2 args
	case $job in
	rand4k-qd1) args="--rw=randwrite --bs=4k --iodepth=1" ;;
	rand4k-qd16) args="--rw=randwrite --bs=4k --iodepth=16" ;;
	seq1m) args="--rw=write --bs=1m --iodepth=4" ;;
	esac
	fio --name=b --ioengine=nbd --uri="${URI[$target]}" --size=$SIZE $args \
		--time_based --runtime=$RUNTIME --ramp_time=1 --output-format=json 2>/dev/null |
		python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]["write"]; print("%.0f %.1f %.1f" % (j["iops"], j["bw"]/1024, j["clat_ns"]["percentile"]["50.000000"]/1000))'
}

# qemu-img bench TARGET -> IOPS
qib_run() {
	local n=40000 t
	t=$(qemu-img bench -f raw -w -c $n -d 16 -s 4096 "${URI[$1]}" 2>&1 | sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p')
	python3 -c "print('%.0f' % ($n/$t))"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A R
for job in rand4k-qd1 rand4k-qd16 seq1m; do
	for run in $(seq "$RUNS"); do
		for target in "${TARGETS[@]}"; do
			read -r iops bw p50 < <(fio_run $job $target)
			echo "$iops" >>"$W/$job.$target.iops"
			echo "$bw" >>"$W/$job.$target.bw"
			echo "$p50" >>"$W/$job.$target.p50"
		done
	done
done
for run in $(seq "$RUNS"); do
	for target in "${TARGETS[@]}"; do qib_run $target >>"$W/qib.$target.iops"; done
done

echo
echo "CDP volumes vs qemu-nbd (raw file), unix sockets, $(date -u +%Y-%m-%dT%H:%MZ), median of $RUNS runs of ${RUNTIME}s"
printf "%-26s %-16s %10s %10s %12s\n" "workload" "server" "IOPS" "MiB/s" "p50 lat us"
for job in rand4k-qd1 rand4k-qd16 seq1m; do
	for target in "${TARGETS[@]}"; do
		R[$job.$target.iops]=$(median <"$W/$job.$target.iops")
		R[$job.$target.bw]=$(median <"$W/$job.$target.bw")
		R[$job.$target.p50]=$(median <"$W/$job.$target.p50")
		printf "%-26s %-16s %10s %10s %12s\n" "fio $job" "$target" "${R[$job.$target.iops]}" "${R[$job.$target.bw]}" "${R[$job.$target.p50]}"
	done
done
for target in "${TARGETS[@]}"; do
	R[qib.$target]=$(median <"$W/qib.$target.iops")
	printf "%-26s %-16s %10s %10s %12s\n" "qemu-img bench 4k qd16" "$target" "${R[qib.$target]}" "-" "-"
done
ratio() { python3 -c "print('%.2f' % ($1/$2))"; }
echo
echo "ratios (CDP on / qemu-nbd; p50 latency CDP on / CDP off)"
for job in rand4k-qd1 rand4k-qd16 seq1m; do
	printf "  fio %-12s throughput vs qemu-nbd %s   p50 latency vs CDP off %s\n" $job \
		"$(ratio "${R[$job.holdfast-cdp.bw]}" "${R[$job.qemu-nbd.bw]}")" \
		"$(ratio "${R[$job.holdfast-cdp.p50]}" "${R[$job.holdfast-nocdp.p50]}")"
done
printf "  qemu-img bench IOPS vs qemu-nbd %s\n" "$(ratio "${R[qib.holdfast-cdp]}" "${R[qib.qemu-nbd]}")"

# --- storage overhead ---------------------------------------------------------
"$H" volume info cdp --state "$W/hf" --json >"$W/info.json"
python3 - "$W/info.json" <<'PY'
import json, sys
i = json.load(open(sys.argv[1]))
w, l = i["written_bytes"], i["log_bytes"]
print()
print("CDP log storage: %.2f GiB written by clients, log %.2f GiB: %.3f GiB of log per GiB written (%d records)"
      % (w / 2**30, l / 2**30, l / w if w else 0, i["last_seq"]))
PY
kill "${PIDS[@]}" 2>/dev/null || true
wait 2>/dev/null || true
PIDS=()

fi

# --- replication lag over the lab path ------------------------------------------
if [ "${SKIP_LAG:-0}" = 1 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "replication lag: skipped (needs root for the lab)"; exit 0; fi
LAB=cdpb
"$H" lab up --name $LAB --rtt 40ms --rate 200Mbit --json --interval 500ms >"$W/lab.log" 2>&1 &
LABPID=$!
PIDS+=($LABPID)
for _ in $(seq 100); do ip netns list | grep -q "hflab-$LAB-h1" && break; sleep 0.1; done
sleep 1
# Two real agents, one per lab host: b holds the cluster CA, a joins it; a's
# volumes ship their CDP log to b over the agents' mTLS wire sessions.
"$H" cluster init --state "$W/b" --name b --listen 198.18.0.2:7440 >/dev/null
ip netns exec hflab-$LAB-h1 "$H" agent --state "$W/b" --log-level warn 2>"$W/b.log" &
BPID=$!
PIDS+=($BPID)
for _ in $(seq 100); do [ -S "$W/b/agent.sock" ] && break; sleep 0.1; done
TOKEN=$("$H" cluster token --state "$W/b")
ip netns exec hflab-$LAB-h0 "$H" cluster join 198.18.0.2:7440 --token "$TOKEN" --state "$W/a" --name a --listen 198.18.0.1:7440 >/dev/null
ip netns exec hflab-$LAB-h0 "$H" agent --state "$W/a" --log-level warn 2>"$W/a.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$W/a/agent.sock" ] && [ -S "$W/a/nbd.sock" ] && break; sleep 0.1; done
for _ in $(seq 100); do "$H" status --state "$W/a" --json | grep -q '"connected": *true' && break; sleep 0.1; done
echo
echo "replication lag over the lab path (200 Mbit/s, 40 ms RTT), async, ${LAGTIME}s of load"
printf "%-42s %10s %10s %10s %14s %12s\n" "load" "p50 lag s" "p99 lag s" "max RPO s" "shipped/total" "emu late ms"
LOADS=${LOADS:-"64k seq writes at 8 MiB/s (67 Mbit/s):64k:8m|64k seq writes at 16 MiB/s (134 Mbit/s):64k:16m|64k seq writes at 21 MiB/s (176 Mbit/s):64k:21m|4k rand writes at 2000 IOPS:4k:2000"}
IFS='|' read -r -a LOADLIST <<<"$LOADS"
for load in "${LOADLIST[@]}"; do
	IFS=: read -r label bs rate <<<"$load"
	vol=lag$RANDOM
	"$H" volume create $vol --size $SIZE --remote b --async --state "$W/a" >/dev/null
	if [ "$bs" = 4k ]; then rl="--rate_iops=$rate --rw=randwrite"; else rl="--rate=$rate --rw=write"; fi
	fio --name=l --ioengine=nbd --uri="nbd+unix:///$vol?socket=$W/a/nbd.sock" --size=$SIZE --bs=$bs $rl \
		--time_based --runtime=$LAGTIME --output-format=json >/dev/null 2>&1 &
	FIO=$!
	maxrpo=0
	labfrom=$(wc -l <"$W/lab.log")
	while kill -0 $FIO 2>/dev/null; do
		r=$("$H" volume info $vol --state "$W/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["replication"]["lag_seconds"])')
		maxrpo=$(python3 -c "print(max($maxrpo, $r))")
		sleep 1
	done
	sleep 2
	# How far behind schedule the lab emulator delivered packets meanwhile
	# (milliseconds mean it was starved of CPU: the figures are not faithful).
	late=$(tail -n +"$((labfrom + 1))" "$W/lab.log" | python3 -c '
import json, sys
m = 0
for line in sys.stdin:
    try:
        j = json.loads(line)
    except ValueError:
        continue
    def walk(o):
        global m
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "max_lag_ns" and isinstance(v, (int, float)):
                    m = max(m, v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(j)
print("%.1f" % (m / 1e6))')
	"$H" volume info $vol --state "$W/a" --json | python3 -c '
import json, sys
i = json.load(sys.stdin); r = i["replication"]
print("%-42s %10.3f %10.3f %10.3f %14s %12s" % (sys.argv[1], r["lag_p50_seconds"], r["lag_p99_seconds"], float(sys.argv[2]), "%d/%d" % (r["shipped_seq"], i["last_seq"]), sys.argv[3]))' "$label" "$maxrpo" "$late"
done

# --- catching up after an outage of the remote ------------------------------------
# b is killed, BACKLOG MiB are written on a, b is started again: the backlog
# goes with the bulk transfer; the table gives how long a took to be caught
# up and the rate that is of the path.
BACKLOG=${BACKLOG:-256}
vol=catchup$RANDOM
"$H" volume create $vol --size $SIZE --remote b --async --state "$W/a" >/dev/null
kill -9 $BPID 2>/dev/null || true
wait $BPID 2>/dev/null || true
qemu-io -f raw -c "write -P 0x5a 0 ${BACKLOG}M" "nbd+unix:///$vol?socket=$W/a/nbd.sock" >/dev/null
ip netns exec hflab-$LAB-h1 "$H" agent --state "$W/b" --log-level warn 2>>"$W/b.log" &
BPID=$!
PIDS+=($BPID)
t0=$(date +%s.%N)
for _ in $(seq 1200); do
	"$H" volume info $vol --state "$W/a" --json | python3 -c 'import json,sys; i=json.load(sys.stdin); sys.exit(0 if i["replication"]["shipped_seq"] == i["last_seq"] and i["last_seq"] > 0 else 1)' && break
	sleep 0.1
done
t1=$(date +%s.%N)
echo
echo "catching up after an outage of the remote (lab path 200 Mbit/s, 40 ms RTT)"
"$H" volume info $vol --state "$W/a" --json | python3 -c '
import json, sys
i = json.load(sys.stdin); r = i["replication"]; secs = float(sys.argv[2]) - float(sys.argv[1])
print("backlog %d MiB: caught up %.1f s after the remote agent started (%.0f Mbit/s of log; %d bulk transfer(s), %d MiB)" % (
    int(sys.argv[3]), secs, i["log_bytes"] * 8 / secs / 1e6, r["bulk_transfers"], r["bulk_bytes"] >> 20))' "$t0" "$t1" "$BACKLOG"

