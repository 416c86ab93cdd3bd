#!/usr/bin/env bash
# Peer-pool benchmarks.
#  1. Reed-Solomon encode/reconstruct throughput on one core (medians of 7
#     runs), by instruction-set path, next to BLAKE3 and memcpy on the same
#     core and the library's published figures.
#  2. (with LAB=1, as root) time from backup end to full peer protection,
#     and a disaster restore, for SIZE across five agents on a lab path.
# Usage: bench/pool/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "## Reed-Solomon, one core, 4 MiB shards ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F))"
go run ./bench/pool/rsbench -runs 7 -time 300ms
cat <<'PUB'

published (klauspost/reedsolomon v1.14.2 README, 1 MB shards, 32 threads,
all-shard MB/s): 5+2 AVX2 202,283 -> 6,321 per thread; GFNI 241,747 ->
7,555 per thread; pure Go 40,690 -> 1,272 per thread.
PUB
if [[ "${LAB:-0}" == 1 ]]; then
  POOL_LAB_BENCH=1 go test ./bench/pool/ -run TestLabProtectAndRestore -count=1 -v -timeout 20m 2>&1 | grep -E '^\s*(lab|\||---|ok|FAIL)'
fi
