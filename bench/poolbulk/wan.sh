#!/usr/bin/env bash
# Backup to an agent across a long, lossy path (the lab's userspace WAN
# emulator, bench/bulk/common.sh): the agent runs in lab host h1 with its
# TCP API, the client (a cluster identity only) in h0 runs
# `holdfast backup --server` with packs through the API (--server-bulk off:
# one HTTP/2 connection) and by bulk transfer + adoption (auto). Each run
# backs up the same incompressible tree into a fresh repository; modes
# alternate, order flipped each run; medians of wall time.
# Usage: bench/poolbulk/wan.sh   (RATE=100Mbit RTT=50ms LOSS=0.1% SIZE_MB=64 RUNS=3; as root)
. "$(dirname "$0")/../bulk/common.sh"
need ip python3 go curl
RATE=${RATE:-100Mbit}; RTT=${RTT:-50ms}; LOSS=${LOSS:-0.1%}; SIZE_MB=${SIZE_MB:-64}
build
machine
lab_up pbwan "rate $RATE, rtt $RTT, loss $LOSS"
export HOLDFAST_PASSWORD=bench
rm -rf "$WORK/state"
"$HF" cluster init --state "$WORK/agent" --name agent --listen $A1:7440 >/dev/null
sed -i "s/^api_listen = \"\"/api_listen = \"$A1:7441\"/" "$WORK/agent/holdfast.toml"
"$HF" pool init --state "$WORK/agent" --capacity $(( (RUNS * 2 + 2) * SIZE_MB * 2 ))MiB --k 1 --m 1 >/dev/null
$H1 "$HF" agent --state "$WORK/agent" --log-level warn 2>"$WORK/agent.log" & PIDS+=($!)
for _ in $(seq 100); do "$HF" status --state "$WORK/agent" >/dev/null 2>&1 && break; sleep 0.1; done
tok=$("$HF" cluster token --state "$WORK/agent")
$H0 "$HF" cluster join $A1:7440 --token "$tok" --state "$WORK/client" --name laptop --listen 127.0.0.1:0 >/dev/null
mkdir -p "$WORK/src"
for i in $(seq 0 $(( SIZE_MB / 16 - 1 ))); do head -c 16M /dev/urandom > "$WORK/src/f$i"; done
echo "tree: $SIZE_MB MiB incompressible; RUNS=$RUNS"
one() { # mode run -> seconds
	local s0 s1
	s0=$(date +%s.%N)
	$H0 "$HF" backup --server $A1:7441 --client-state "$WORK/client" --server-bulk "$1" --repo "r-$1-$2" "$WORK/src" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; exit 1; }
	s1=$(date +%s.%N)
	python3 -c "import sys; print('%.2f' % (float(sys.argv[2])-float(sys.argv[1])))" "$s0" "$s1"
}
offs=(); autos=()
for r in $(seq "$RUNS"); do
	if (( r % 2 )); then a=$(one off "$r"); b=$(one auto "$r"); else b=$(one auto "$r"); a=$(one off "$r"); fi
	offs+=("$a"); autos+=("$b")
	echo "run $r: api ${a}s  bulk ${b}s"
done
mo=$(printf "%s\n" "${offs[@]}" | median); ma=$(printf "%s\n" "${autos[@]}" | median)
adopted=$(curl -s --unix-socket "$WORK/agent/agent.sock" http://agent/metrics | awk '/^holdfast_pool_adopted_packs_total/ {print $2}')
mbps() { python3 -c "import sys; print('%.1f' % ($SIZE_MB*8*1.048576/float(sys.argv[1])))" "$1"; }
echo "| path | packs through the API (off) | packs by bulk + adopt (auto) | speed-up |"
echo "|---|---|---|---|"
echo "| rate $RATE, rtt $RTT, loss $LOSS | $mo s ($(mbps "$mo") Mbit/s) | $ma s ($(mbps "$ma") Mbit/s) | $(python3 -c "print('%.1f' % ($mo/$ma))")× |"
echo "# packs adopted by the agent: $adopted; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
lab_down
