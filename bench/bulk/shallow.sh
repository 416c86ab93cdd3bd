#!/usr/bin/env bash
# Scenario 2: the path of scenario 1 with a shallow bottleneck queue
# (32 KiB): holdfast cp with pacing vs without (--no-pace), side by side.
# Drops are counted by the lab's emulator at the bottleneck queue.
# holdfast keeps what each paced copy measured of its path (goodput, RTT,
# connections) in <state>/bulk-paths.json for an hour: the first paced run
# starts fresh (slow start, which overshoots a shallow queue), the later
# ones start from it; each run's line says which. Unpaced copies neither
# use nor update it.
# Usage: bench/bulk/shallow.sh  (RATE=200Mbit RTT=100ms LOSS=0.1% QUEUE=32KiB SIZE=128M RUNS=3)
. "$(dirname "$0")/common.sh"
need python3 go ip
RATE=${RATE:-200Mbit}; RTT=${RTT:-100ms}; LOSS=${LOSS:-0.1%}; QUEUE=${QUEUE:-32KiB}; SIZE=${SIZE:-128M}
build
machine
lab_up bkshl "rate $RATE, rtt $RTT, loss $LOSS, queue $QUEUE"
head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
BYTES=$(stat -c %s "$WORK/src.bin")
mkdir -p "$WORK/recv"
echo "file: $BYTES bytes, RUNS=$RUNS, cubic"
$H1 "$HF" serve --state "$WORK/state" --listen $A1:7470 --root "$WORK/recv" 2>"$WORK/serve.log" & PIDS+=($!)
sleep 1

run() { # flags -> "queue_drops loss_drops goodput_bits_per_s"
	rm -f "$WORK/recv/dst.bin"
	sleep 1.1
	local d0 d1
	d0=$(queue_drops)
	$H0 "$HF" cp --state "$WORK/state" --no-progress --json --cc cubic "$@" "$WORK/src.bin" $A1:7470:/dst.bin > "$WORK/rep.json"
	sleep 1.1
	d1=$(queue_drops)
	cmp -s "$WORK/src.bin" "$WORK/recv/dst.bin" || { echo "copy differs" >&2; exit 1; }
	python3 -c "import sys,json; a=sys.argv[1].split(); b=sys.argv[2].split(); d=json.load(open(sys.argv[3])); print(int(b[0])-int(a[0]), int(b[1])-int(a[1]), d['goodput_bits_per_sec'], d['pace_rate_bytes_per_sec']*8, d.get('remembered_bandwidth_bytes_per_sec',0)*8)" "$d0" "$d1" "$WORK/rep.json"
}

declare -A QD GP LD
for i in $(seq "$RUNS"); do
	for mode in paced unpaced; do
		if [ $mode = paced ]; then r=$(run); else r=$(run --no-pace); fi
		set -- $r
		QD[$mode]+="$1 "; LD[$mode]+="$2 "; GP[$mode]+="$3 "
		echo "run $i $mode: queue drops $1, random-loss drops $2, goodput $(python3 -c "print('%.1f' % ($3/1e6))") Mbit/s, pace rate $(python3 -c "print('%.1f' % ($4/1e6))") Mbit/s, started from a remembered $(python3 -c "print('%.1f' % ($5/1e6))") Mbit/s" >&2
	done
done
echo
printf "%-9s %18s %17s %15s\n" mode "median queue drops" "median loss drops" "median Mbit/s"
for mode in paced unpaced; do
	printf "%-9s %18s %17s %15s\n" $mode "$(echo ${QD[$mode]} | tr ' ' '\n' | median)" "$(echo ${LD[$mode]} | tr ' ' '\n' | median)" "$(python3 -c "print('%.1f' % ($(echo ${GP[$mode]} | tr ' ' '\n' | median)/1e6))")"
done
python3 -c "import sys; p,u=float(sys.argv[1]),float(sys.argv[2]); print('unpaced/paced queue drops: %s' % ('%.1fx' % (u/p) if p else 'paced had none (unpaced %d)' % u))" "$(echo ${QD[paced]} | tr ' ' '\n' | median)" "$(echo ${QD[unpaced]} | tr ' ' '\n' | median)"
