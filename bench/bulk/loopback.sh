#!/usr/bin/env bash
# Scenario 4: loopback, no emulation, one file to file.
# holdfast cp (mTLS, per-block BLAKE3, end-to-end hash, atomic rename) vs
# scp (encrypts, checks integrity) vs iperf3 -P 1 (moves bytes from memory
# to memory without encrypting, hashing or touching files: the ceiling).
# Usage: bench/bulk/loopback.sh            (SIZE=4G RUNS=3 by default)
# Each run starts after a sync with the previous output deleted: a write
# into the page cache while gigabytes of an earlier run's dirty pages are
# being written back runs at a tenth of the speed on this VM (dd: 0.4 against
# 3-6 GB/s), whichever tool comes next.
#        SIZE=1G RUNS=5 bench/bulk/loopback.sh
# Reports medians of RUNS runs of wall time, rate, and CPU-seconds per GB
# (both ends), then a CPU profile of holdfast's data path.
. "$(dirname "$0")/common.sh"
need iperf3 scp ssh-keygen python3 go
SIZE=${SIZE:-4G}
TOOLS=${TOOLS:-holdfast holdfast-blake3 scp iperf3}
PORT=${PORT:-17471}
build
machine
head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
BYTES=$(stat -c %s "$WORK/src.bin")
# DEST=tmpfs writes the copies to /dev/shm: the same comparison without this
# VM's disk writeback, whose cost moves from run to run with other work.
OUT=$WORK
if [ "${DEST:-disk}" = tmpfs ]; then
	OUT=$(mktemp -d /dev/shm/hf-bench-lb.XXXXXX)
	trap 'rm -rf "$OUT"; cleanup' EXIT
fi
mkdir -p "$OUT/recv" "$OUT/scpdst"
echo "file: $BYTES bytes of random data (in the page cache), RUNS=$RUNS, copies written to ${DEST:-disk} ($OUT)"

"$HF" serve --state "$WORK/state" --listen 127.0.0.1:$PORT --root "$OUT/recv" 2>"$WORK/serve.log" &
SERVE=$!; PIDS+=($SERVE); sleep 0.5
start_sshd "" 127.0.0.1 $((PORT + 1))

run_holdfast() { # extra flags...
	rm -f "$OUT/recv/dst.bin"
	sync # every tool starts with no dirty pages of the one before
	local c0 t0 t1 c1
	c0=$(cpu_ticks $SERVE)
	t0=$(date +%s.%N)
	/usr/bin/time -f "%U %S" -o "$WORK/time" "$HF" cp --state "$WORK/state" --no-progress --json "$@" "$WORK/src.bin" 127.0.0.1:$PORT:/dst.bin > "$WORK/rep.json"
	t1=$(date +%s.%N)
	c1=$(cpu_ticks $SERVE)
	cmp -s "$WORK/src.bin" "$OUT/recv/dst.bin" || { echo "holdfast copy differs" >&2; exit 1; }
	python3 -c "import sys; t0,t1,c0,c1,u,s=map(float,sys.argv[1:7]); print(t1-t0, u+s+(c1-c0)/$TICK)" $t0 $t1 $c0 $c1 $(cat "$WORK/time")
}

run_scp() {
	rm -f "$OUT/scpdst/dst.bin"
	sync # every tool starts with no dirty pages of the one before
	local c0 t0 t1 c1
	c0=$(cpu_ticks $SSHD_PID)
	t0=$(date +%s.%N)
	/usr/bin/time -f "%U %S" -o "$WORK/time" scp -q "${SSH_OPTS[@]}" -P $((PORT + 1)) "$WORK/src.bin" root@127.0.0.1:"$OUT/scpdst/dst.bin"
	t1=$(date +%s.%N)
	sleep 0.2
	c1=$(cpu_ticks $SSHD_PID)
	cmp -s "$WORK/src.bin" "$OUT/scpdst/dst.bin" || { echo "scp copy differs" >&2; exit 1; }
	python3 -c "import sys; t0,t1,c0,c1,u,s=map(float,sys.argv[1:7]); print(t1-t0, u+s+(c1-c0)/$TICK)" $t0 $t1 $c0 $c1 $(cat "$WORK/time")
}

run_iperf() {
	sync
	/usr/bin/time -f "%U %S" -o "$WORK/stime" iperf3 -s -1 -p $((PORT + 2)) >/dev/null 2>&1 &
	local sp=$!; sleep 0.3
	local t0 t1
	t0=$(date +%s.%N)
	/usr/bin/time -f "%U %S" -o "$WORK/time" iperf3 -c 127.0.0.1 -p $((PORT + 2)) -P 1 -n "$BYTES" >/dev/null
	t1=$(date +%s.%N)
	wait $sp || true
	python3 -c "import sys; t0,t1,u,s,su,ss=map(float,sys.argv[1:7]); print(t1-t0, u+s+su+ss)" $t0 $t1 $(cat "$WORK/time") $(cat "$WORK/stime")
}

declare -A SECS CPU
for tool in $TOOLS; do SECS[$tool]=""; CPU[$tool]=""; done
for i in $(seq "$RUNS"); do
	for tool in $TOOLS; do
		case $tool in
		holdfast) r=$(run_holdfast --streams auto) ;;
		holdfast-nopace) r=$(run_holdfast --streams auto --no-pace) ;;
		holdfast-blake3) r=$(run_holdfast --streams auto --checksum blake3) ;;
		scp) r=$(run_scp) ;;
		iperf3) r=$(run_iperf) ;;
		esac
		SECS[$tool]+="${r%% *} "; CPU[$tool]+="${r##* } "
		echo "run $i $tool: ${r%% *} s, ${r##* } CPU-s" >&2
	done
done
STREAMS=$(json_get "$WORK/rep.json" 'd["max_streams_used"]')

echo
printf "%-17s %9s %10s %11s %12s %10s\n" tool "median s" "Gbit/s" "CPU-s/GB" "vs scp" "vs iperf3"
HS=$(echo ${SECS[holdfast]} | tr ' ' '\n' | median)
SS=$(echo ${SECS[scp]} | tr ' ' '\n' | median)
IS=$(echo ${SECS[iperf3]} | tr ' ' '\n' | median)
for tool in $TOOLS; do
	s=$(echo ${SECS[$tool]} | tr ' ' '\n' | median)
	c=$(echo ${CPU[$tool]} | tr ' ' '\n' | median)
	python3 -c "import sys; n,s,c,ss,i=sys.argv[1],*map(float,sys.argv[2:6]); b=$BYTES; print('%-17s %9.2f %10.2f %11.2f %11.2fx %9.0f%%' % (n, s, b*8/s/1e9, c/(b/1e9), ss/s, 100*i/s))" "$tool" "$s" "$c" "$SS" "$IS"
done
echo "(holdfast: mTLS 1.3 AES-GCM, CRC-32C (holdfast-blake3: BLAKE3) per 1 MiB block, BLAKE3 over the block checksums end to end, atomic rename; up to $STREAMS connections;"
echo " scp: OpenSSH $(ssh -V 2>&1 | cut -d' ' -f1 | cut -d_ -f2) default cipher; iperf3 -P 1 memory to memory; CPU = both ends, user+system)"

if [ "${PROFILE:-1}" = 1 ]; then
	echo
	echo "where holdfast's CPU goes (go test -bench BenchmarkLoopbackNoPace, 256 MiB x 4, both ends in one process):"
	(cd "$ROOT_DIR" && go test ./internal/bulk -run XXX -bench 'BenchmarkLoopbackNoPace$' -benchtime 4x -cpuprofile "$WORK/cpu.out" -o "$WORK/bulk.test" | grep Benchmark)
	go tool pprof -top -cum -nodecount 1000 "$WORK/bulk.test" "$WORK/cpu.out" 2>/dev/null | python3 "$(dirname "$0")/profile.py"
fi
