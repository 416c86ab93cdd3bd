#!/usr/bin/env bash
# Five agents on loopback: back up a tree to one of them, watch its peer
# protection, lose the origin and two peers, and restore from the rest.
# Usage: bench/pool/example.sh [holdfast-binary]
set -euo pipefail
H=${1:-holdfast}
D=$(mktemp -d /tmp/holdfast-pool-example.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
export HOLDFAST_PASSWORD=example-passphrase
BASE=${PORT_BASE:-17450}

start() { # name index
  "$H" pool init --state "$D/$1" --capacity 1GiB --k 2 --m 2 >/dev/null
  "$H" agent --state "$D/$1" --log-level warn 2>"$D/$1.log" & PIDS+=($!)
}
"$H" cluster init --state "$D/e" --name e --listen 127.0.0.1:$((BASE+5)) --label zone=z5 >/dev/null
start e
sleep 0.5
i=0
for n in a b c d; do
  i=$((i+1))
  tok=$("$H" cluster token --state "$D/e")
  "$H" cluster join 127.0.0.1:$((BASE+5)) --token "$tok" --state "$D/$n" --name $n --listen 127.0.0.1:$((BASE+i)) --label zone=z$i >/dev/null
  start $n
done
sleep 2

# Some data with a recognisable plaintext marker.
mkdir -p "$D/src/docs"
for i in $(seq 1 20); do head -c 200000 /dev/urandom > "$D/src/docs/blob$i"; done
for i in $(seq 1 20); do yes "PLAINTEXT-MARKER-$i confidential" | head -c 100000 > "$D/src/docs/text$i.txt" || true; done

echo "== backup to agent a"
"$H" backup --server "$D/a" --repo laptop "$D/src"
echo "== wait for peer protection"
"$H" pool protect --state "$D/a" --wait 60s --level 2 | head -30
echo "== plaintext marker on peers (expect none):"
grep -rl PLAINTEXT-MARKER "$D"/b "$D"/c "$D"/d "$D"/e || echo "none"

echo "== disaster: a, b and c are lost"
kill -9 "${PIDS[1]}" "${PIDS[2]}" "${PIDS[3]}"
rm -rf "$D/a" "$D/b" "$D/c"
tok=$("$H" cluster token --state "$D/e")
"$H" cluster join 127.0.0.1:$((BASE+5)) --token "$tok" --state "$D/a" --name a --listen 127.0.0.1:$((BASE+1)) --label zone=z1 >/dev/null
start a
sleep 2
echo "== restore --from-peers on a fresh agent a"
"$H" restore --from-peers --state "$D/a" --repo laptop --target "$D/restored" latest
diff -r "$D/src" "$D/restored/src" && echo "restored tree is byte-identical"
"$H" pool protect --state "$D/a" | sed -n "/backups/,/protection:/p"
