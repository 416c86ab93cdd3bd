#!/usr/bin/env bash
# Service-level tagging on the lab: a deadline task against untagged bulk
# flows, untagged vs statically marked vs tagged by holdfast (slo.Tagger);
# and a task far ahead of its deadline, untagged vs tagged. Prints a
# markdown table of medians. Needs root (network namespaces) and ~4 min.
#
#   sudo bench/slo/run.sh            # 3 runs of each mode
#   RUNS=5 bench/slo/run.sh
#   JSON=out.json bench/slo/run.sh   # also every run's result, class changes
#                                    # and timeline, as JSON
#   LAB_PATH="rate 20Mbit, rtt 40ms" bench/slo/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
	echo "bench/slo needs root for the lab's network namespaces" >&2
	exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/slo-bench" ./bench/slo
"$out/slo-bench" -runs "${RUNS:-3}" -path "${LAB_PATH:-rate 10Mbit, rtt 20ms}" ${JSON:+-json "$JSON"}
