# Shared helpers of the bulk benchmarks (sourced, not run).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/hf-bench-bulk.XXXXXX)}
RUNS=${RUNS:-3}
HF="$WORK/holdfast"
PIDS=()

cleanup() {
	for p in "${PIDS[@]:-}"; do
		[ -n "$p" ] && kill "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

need() {
	for t in "$@"; do
		command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 2; }
	done
}

build() {
	(cd "$ROOT_DIR" && go build -o "$HF" ./cmd/holdfast)
	"$HF" cluster init --state "$WORK/state" --name bench >/dev/null
}

# median of numbers on stdin
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print("%.3f" % statistics.median(v) if v else "nan")'; }

# cpu_ticks PID: user+system+children ticks of a live process
cpu_ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# json_get FILE EXPR: evaluate a python expression on the JSON object in FILE (d)
json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

machine() {
	echo "machine: $(nproc) vCPU $(awk '/model name/{$1=$2=$3="";print;exit}' /proc/cpuinfo | xargs), $(free -g | awk '/Mem/{print $2}') GiB, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "sysctl: net.core.wmem_max=$(sysctl -n net.core.wmem_max) rmem_max=$(sysctl -n net.core.rmem_max) tcp_wmem='$(sysctl -n net.ipv4.tcp_wmem)' tcp_rmem='$(sysctl -n net.ipv4.tcp_rmem)' slow_start_after_idle=$(sysctl -n net.ipv4.tcp_slow_start_after_idle)"
	echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: $(cd "$ROOT_DIR" && git rev-parse --short HEAD)"
}

# start_sshd NETNS_PREFIX ADDR PORT: an sshd for scp/rsync over ssh, keys in $WORK/ssh
start_sshd() {
	local pre="$1" addr="$2" port="$3"
	mkdir -p "$WORK/ssh"
	[ -d /run/sshd ] || mkdir -p -m 0755 /run/sshd # sshd refuses to start without its privilege separation directory
	[ -f "$WORK/ssh/host" ] || ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host"
	[ -f "$WORK/ssh/id" ] || ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/id"
	cp "$WORK/ssh/id.pub" "$WORK/ssh/authorized_keys"
	cat > "$WORK/ssh/sshd_config" <<CFG
Port $port
ListenAddress $addr
HostKey $WORK/ssh/host
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin yes
PasswordAuthentication no
UsePAM no
StrictModes no
PidFile $WORK/ssh/sshd.pid
Subsystem sftp internal-sftp
CFG
	$pre /usr/sbin/sshd -D -f "$WORK/ssh/sshd_config" -E "$WORK/ssh/sshd.log" &
	PIDS+=($!)
	SSHD_PID=$!
	sleep 0.5
	SSH_OPTS=(-i "$WORK/ssh/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
}

# lab_up NAME PATH...: start `holdfast lab up` with a path description;
# sets H0/H1 (command prefixes for the two hosts), A1 (host 1's address)
# and LABLOG (JSON lines of cumulative path counters, every 0.5 s).
lab_up() {
	local name="$1"; shift
	LABLOG="$WORK/lab-$name.jsonl"
	# The emulator stands in for the network: it runs at a real-time
	# priority (SCHED_RR) so that the programs under test, or anything else
	# on these two cores, cannot starve it into adding delay and bursts of
	# its own ("max_lag_ns" and "late_packets" in $LABLOG tell how late it
	# ran). PRIO= (empty) runs it at normal priority.
	${PRIO-chrt -r 10} "$HF" lab up --name "$name" --path "$*" --json --interval 500ms > "$LABLOG" 2> "$WORK/lab-$name.err" &
	LAB_PID=$!
	PIDS+=($LAB_PID)
	for _ in $(seq 100); do
		ip netns list | grep -q "hflab-$name-h1" && [ -s "$LABLOG" ] && break
		sleep 0.1
	done
	H0="ip netns exec hflab-$name-h0"
	H1="ip netns exec hflab-$name-h1"
	# Give every flow in the lab the same default congestion control (a
	# per-namespace sysctl). A namespace may only pick one listed in the
	# host-wide net.ipv4.tcp_allowed_congestion_control, so the list is
	# widened for the moment it takes, then put back: the host's own
	# default and list are unchanged afterwards.
	local allowed
	allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
	case " $allowed " in *" ${CC:-cubic} "*) ;; *) sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed ${CC:-cubic}" ;; esac
	$H0 sysctl -qw net.ipv4.tcp_congestion_control="${CC:-cubic}" 2>/dev/null || true
	$H1 sysctl -qw net.ipv4.tcp_congestion_control="${CC:-cubic}" 2>/dev/null || true
	sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed"
	LABCC=$($H0 sysctl -n net.ipv4.tcp_congestion_control)
	A1=198.18.0.2
	echo "lab path: $*"
}

lab_down() {
	kill -INT "$LAB_PID" 2>/dev/null || true
	wait "$LAB_PID" 2>/dev/null || true
}

# queue_drops: cumulative bottleneck drops (queue) and random-loss drops of
# the h0->h1 direction, from the lab's latest report: "QUEUE LOSS"
queue_drops() {
	tail -n 1 "$LABLOG" | python3 -c '
import json,sys
d=json.loads(sys.stdin.read())
for p in d["paths"]:
    if p["from"]==0 and p["to"]==1:
        print(p["total"]["queue_drops"], p["total"]["loss_drops"])'
}
