#!/usr/bin/env bash
# Scenario 1: a long, lossy path on the lab (userspace WAN emulator):
# holdfast cp vs one TCP stream (iperf3 -P 1), iperf3 -P 8, a
# multi-connection downloader (aria2c -x 8 from a plain HTTP server that
# answers Range requests, bench/bulk/httpd),
# rsync to an rsync daemon, and scp. Cubic congestion control everywhere.
# Usage: bench/bulk/wan.sh   (RATE=200Mbit RTT=100ms LOSS=0.1% SIZE=1G RUNS=3 CAP=40)
# Rows: holdfast (its defaults: --cc auto, which is bbr here, --streams
# auto), holdfast-cubic (--cc cubic, --streams auto), holdfast-cubic64
# (also --max-streams 64), holdfast-nopace (defaults but --no-pace): those
# two run when named in TOOLS. The baselines
# all use cubic. iperf3-P4-bbr (4 bbr flows for 45 s: what the path gives
# TCP with bbr, for reference; run when named in TOOLS). aria2c, rsync and
# scp copy for at most CAP
# seconds (their rate is the bytes that arrived over the time taken).
# net.core.wmem_max stays as it is (4 MiB here): it caps one socket's send
# buffer, which alone limits one stream to about wmem_max/RTT.
. "$(dirname "$0")/common.sh"
need iperf3 aria2c rsync scp python3 go ip
RATE=${RATE:-200Mbit}; RTT=${RTT:-100ms}; LOSS=${LOSS:-0.1%}; SIZE=${SIZE:-1G}; QUEUE=${QUEUE:-}; CAP=${CAP:-40}
build
machine
PATHDESC="rate $RATE, rtt $RTT, loss $LOSS${QUEUE:+, queue $QUEUE}"
lab_up bkwan "$PATHDESC"
head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
BYTES=$(stat -c %s "$WORK/src.bin")
mkdir -p "$WORK/recv" "$WORK/www" "$WORK/rsync" "$WORK/scp" "$WORK/aria"
ln -f "$WORK/src.bin" "$WORK/www/src.bin"
echo "file: $BYTES bytes, RUNS=$RUNS; holdfast chooses its congestion control (auto: bbr) unless --cc cubic; iperf3 sets cubic per socket; aria2c, rsync and scp use the lab hosts' default: $LABCC (allowed here: $(sysctl -n net.ipv4.tcp_allowed_congestion_control))"

$H1 "$HF" serve --state "$WORK/state" --listen $A1:7470 --root "$WORK/recv" 2>"$WORK/serve.log" & PIDS+=($!)
$H1 iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
(cd "$ROOT_DIR" && go build -o "$WORK/httpd" ./bench/bulk/httpd)
$H1 "$WORK/httpd" -listen $A1:8080 -dir "$WORK/www" >/dev/null 2>&1 & PIDS+=($!)
cat > "$WORK/rsyncd.conf" <<CFG
pid file = $WORK/rsyncd.pid
use chroot = no
[m]
path = $WORK/rsync
read only = false
uid = root
gid = root
CFG
$H1 rsync --daemon --no-detach --address=$A1 --port=8730 --config="$WORK/rsyncd.conf" & PIDS+=($!)
start_sshd "$H1" $A1 2222
sleep 1

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(float(sys.argv[2])-float(sys.argv[1]))" "$1" "$2"; }

# capped OUT CMD...: run a copy for at most CAP seconds; rate = bytes that
# reached OUT over the time taken (a whole copy is also compared with the
# source). Single-connection tools need many minutes per GiB on this path.
capped() {
	local out="$1" t0 t1 s n; shift
	t0=$(now)
	timeout "$CAP" "$@" || true
	t1=$(now)
	# Bytes that arrived: the allocated size, since a multi-connection
	# downloader writes segments at their offsets into a sparse file.
	s=$(elapsed "$t0" "$t1"); n=$(stat -c '%b %B %s' "$out" 2>/dev/null | awk '{a=$1*$2; print (a<$3)?a:$3}'); n=${n:-0}
	if [ "$n" = "$BYTES" ]; then cmp -s "$WORK/src.bin" "$out" || { echo "$out differs from the source" >&2; exit 1; }; fi
	python3 -c "import sys; s=float(sys.argv[1]); print(s, int(sys.argv[2])*8/s)" "$s" "$n"
}

run() { # tool -> prints "seconds goodput_bits_per_s"
	local t0 t1 s
	case $1 in
	holdfast|holdfast-cubic|holdfast-cubic64|holdfast-nopace)
		local flags=()
		[ "$1" = holdfast-nopace ] && flags=(--no-pace)
		[ "$1" = holdfast-cubic ] && flags=(--cc cubic)
		[ "$1" = holdfast-cubic64 ] && flags=(--cc cubic --max-streams 64)
		echo "$1" > "$WORK/lasthf"
		rm -f "$WORK/recv/dst.bin"; t0=$(now)
		$H0 "$HF" cp --state "$WORK/state" --no-progress --json "${flags[@]}" "$WORK/src.bin" $A1:7470:/dst.bin > "$WORK/rep.json"
		t1=$(now); cmp -s "$WORK/src.bin" "$WORK/recv/dst.bin" || { echo "holdfast copy differs" >&2; exit 1; } ;;
	iperf3-P1|iperf3-P8|iperf3-P4-bbr)
		local p=${1#iperf3-P} cc=cubic t=15
		case $1 in *-bbr) p=${p%-bbr}; cc=bbr; t=45 ;; esac
		$H0 iperf3 -c $A1 -p 5201 -P "$p" -t "$t" -C "$cc" -J > "$WORK/iperf.json"
		python3 -c "import json; d=json.load(open('$WORK/iperf.json')); r=d['end']['sum_received']; print(r['seconds'], r['bits_per_second'])"
		return ;;
	aria2c)
		rm -f "$WORK/aria/src.bin"*; t0=$(now)
		capped "$WORK/aria/src.bin" $H0 aria2c -q -x 8 -s 8 -k 1M --file-allocation=none --dir "$WORK/aria" http://$A1:8080/src.bin
		return ;;
	rsync)
		rm -f "$WORK/rsync/dst.bin"; t0=$(now)
		capped "$WORK/rsync/dst.bin" $H0 rsync -q --whole-file --inplace "$WORK/src.bin" rsync://$A1:8730/m/dst.bin
		return ;;
	scp)
		rm -f "$WORK/scp/dst.bin"; t0=$(now)
		capped "$WORK/scp/dst.bin" $H0 scp -q "${SSH_OPTS[@]}" -P 2222 "$WORK/src.bin" root@$A1:"$WORK/scp/dst.bin"
		return ;;
	esac
	s=$(elapsed "$t0" "$t1")
	python3 -c "import sys; s=float(sys.argv[1]); print(s, $BYTES*8/s)" "$s"
}

TOOLS="${TOOLS:-holdfast holdfast-cubic iperf3-P1 iperf3-P8 aria2c rsync scp}"
declare -A RATES
for i in $(seq "$RUNS"); do
	for tool in $TOOLS; do
		r=$(run $tool)
		RATES[$tool]+="${r##* } "
		echo "run $i $tool: $r" >&2
	done
done

echo
printf "%-11s %13s %9s %11s\n" tool "median Mbit/s" "% of link" "vs 1 stream"
LINK=$(python3 -c "
import re; m=re.match(r'([\d.]+)([kMG]?)bit','$RATE'); print(float(m.group(1))*{'':1,'k':1e3,'M':1e6,'G':1e9}[m.group(2)])")
ONE=$(echo ${RATES[iperf3-P1]} | tr ' ' '\n' | median)
for tool in $TOOLS; do
	m=$(echo ${RATES[$tool]} | tr ' ' '\n' | median)
	python3 -c "import sys; n,m,l,o=sys.argv[1],*map(float,sys.argv[2:5]); print('%-11s %13.1f %8.0f%% %10.2fx' % (n, m/1e6, 100*m/l, m/o))" "$tool" "$m" "$LINK" "$ONE"
done
python3 - "$WORK/rep.json" "$(cat "$WORK/lasthf" 2>/dev/null)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
name = sys.argv[2]
c = d["conns"][0]["prime"]
print("last holdfast run (%s): %d connections at most, %d sub-transfers; priming: RTT %.1f ms, send buffer wanted %d, got %d%s; cwnd %d -> %d bytes; retransmits %s" % (
    name, d["max_streams_used"], d["sub_transfers"], c["rtt_ns"] / 1e6, c["sndbuf_wanted"], c["sndbuf"],
    " (capped by net.core.wmem_max=%d)" % c["wmem_max"] if c["sndbuf_capped"] else "",
    c["cwnd_before_bytes"], c["cwnd_after_bytes"], [x["retransmits"] for x in d["conns"]]))
PY
echo "(wall time of each copy including connection setup; iperf3: 15 s memory to memory, receiver rate; one stream's"
echo " send buffer is capped at net.core.wmem_max=$(sysctl -n net.core.wmem_max) bytes: at most $(python3 -c "print('%.0f' % ($(sysctl -n net.core.wmem_max)*8/float('${RTT%ms}')/1e3))") Mbit/s at RTT $RTT)"
