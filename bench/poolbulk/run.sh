#!/usr/bin/env bash
# Backup to an agent over its mTLS TCP API (`holdfast backup --server
# HOST:PORT`), loopback: packs through the API (--server-bulk off) against
# packs by bulk transfer and adoption (--server-bulk auto). One agent
# process, one client identity; each run backs up the same incompressible
# tree into a fresh repository; modes alternate, order flipped each run.
# Prints each run's wall time and the medians.
#
# Usage: bench/poolbulk/run.sh   (RUNS=5 SIZE_MB=512; from the repository root)
set -euo pipefail
RUNS=${RUNS:-5}
SIZE_MB=${SIZE_MB:-512}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
apid=""
cleanup() {
	[ -n "$apid" ] && kill "$apid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
cd "$root"
echo "# backup --server over loopback, $SIZE_MB MiB incompressible, $RUNS runs  $(date -u +%Y-%m-%dT%H:%MZ)  commit $(git rev-parse --short HEAD)"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
go build -o "$tmp/holdfast" ./cmd/holdfast
hf="$tmp/holdfast"
export HOLDFAST_PASSWORD=bench
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=127.0.0.1:$(free)
"$hf" cluster init --state "$tmp/agent" --name agent --listen 127.0.0.1:0 >/dev/null
sed -i "s/^api_listen = \"\"/api_listen = \"$api\"/" "$tmp/agent/holdfast.toml"
"$hf" pool init --state "$tmp/agent" --capacity $(( (RUNS * 2 + 2) * SIZE_MB * 2 ))MiB --k 1 --m 1 >/dev/null
"$hf" agent --state "$tmp/agent" --log-level warn 2>"$tmp/agent.log" &
apid=$!
for _ in $(seq 100); do "$hf" status --state "$tmp/agent" >/dev/null 2>&1 && break; sleep 0.1; done
wire=$("$hf" status --state "$tmp/agent" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["listen"])')
tok=$("$hf" cluster token --state "$tmp/agent")
"$hf" cluster join "$wire" --token "$tok" --state "$tmp/client" --name laptop --listen 127.0.0.1:0 >/dev/null
mkdir -p "$tmp/src"
for i in $(seq 0 $(( SIZE_MB / 32 - 1 ))); do head -c 32M /dev/urandom > "$tmp/src/f$i"; done
one() { # mode run -> seconds
	local s0 s1
	s0=$(date +%s.%N)
	"$hf" backup --server "$api" --client-state "$tmp/client" --server-bulk "$1" --repo "r-$1-$2" "$tmp/src" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
	s1=$(date +%s.%N)
	echo "$s1 - $s0" | bc
}
declare -a off auto
for r in $(seq "$RUNS"); do
	if (( r % 2 )); then a=$(one off "$r"); b=$(one auto "$r"); else b=$(one auto "$r"); a=$(one off "$r"); fi
	off+=("$a"); auto+=("$b")
	printf "run %d: api %.2fs  bulk %.2fs\n" "$r" "$a" "$b"
done
med() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(med "${off[@]}"); ma=$(med "${auto[@]}")
adopted=$(curl -s --unix-socket "$tmp/agent/agent.sock" http://agent/metrics | awk '/^holdfast_pool_adopted_packs_total/ {print $2}')
printf "| mode | median wall time | MB/s |\n|---|---|---|\n"
printf "| packs through the API (--server-bulk off) | %.2f s | %.0f |\n" "$mo" "$(echo "$SIZE_MB * 1.048576 / $mo" | bc -l)"
printf "| packs by bulk + adopt (auto) | %.2f s | %.0f |\n" "$ma" "$(echo "$SIZE_MB * 1.048576 / $ma" | bc -l)"
echo "# bulk/api time ratio: $(echo "$ma / $mo" | bc -l | cut -c1-5); packs adopted by the agent: $adopted"
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
