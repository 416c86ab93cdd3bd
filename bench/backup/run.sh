#!/usr/bin/env bash
# Backup repository benchmark: holdfast against restic and borg, side by side
# in one run, medians of RUNS runs.
#
# Data sets: a copy of the Go toolchain's tree (go env GOROOT) and a generated
# set (GEN_MIB MiB, default 2048 as the issue asks, a third of its content
# duplicated; GEN_MIB=512 makes a run about twice as quick).
#
# Tools: holdfast with its defaults (format 2: small files compressed
# together in groups, zstd level 1, 512 KiB chunks), restic, borg (their
# defaults), and, if HF_OLD_BIN names one, an older holdfast binary with its
# defaults (to compare before and after a change in the same run).
# Per tool and data set: initial backup, second backup with no change, backup
# after changing 1% of the files, full restore of the latest snapshot,
# repository size, peak resident memory (max over those commands). Then the
# aging test: ten backups of the Go tree with changes in between, restore of
# the first and of the newest snapshot (holdfast and restic).
#
# Usage: bench/backup/run.sh   (env: RUNS=3 GEN_MIB=2048 AGING=1 BENCH_DIR=/var/tmp/holdfast-bench-backup
#                              HF_BIN=prebuilt holdfast binary, else built from this tree;
#                              HF_OLD_BIN=an older holdfast binary, shown as "hf old";
#                              WARM=0: do not read the data into the page cache before each tool)
set -euo pipefail

RUNS=${RUNS:-3}
GEN_MIB=${GEN_MIB:-2048}
BENCH_DIR=${BENCH_DIR:-/var/tmp/holdfast-bench-backup}
AGING=${AGING:-1}
WARM=${WARM:-1}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

for tool in restic borg go python3; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool not installed" >&2; exit 1; }
done
# Deleting many files makes ext4 slow to create files for a while after:
# it skips inodes freed in the last 60 s (longer while their inode table
# block is dirty) when allocating new ones, so restoring 15,000 files right
# after deleting 15,000 others took 5-10 times as long here, for every tool
# and for cp -a. So the big trees this script makes (restored Go trees, the
# aging copy) are moved into $TRASH and deleted only at the end, and a
# leftover directory from an earlier run is deleted a minute before starting.
if [ -e "$BENCH_DIR" ]; then
	rm -rf "$BENCH_DIR"
	sync
	echo "== waiting 65 s after deleting $BENCH_DIR (see above)" >&2
	sleep 65
fi
mkdir -p "$BENCH_DIR"
trap 'rm -rf "$BENCH_DIR"' EXIT
TRASH="$BENCH_DIR/trash"
mkdir -p "$TRASH"
retire() { # retire DIR: move DIR out of the way without freeing its inodes yet
	[ -e "$1" ] && mv "$1" "$(mktemp -d "$TRASH/t.XXXXXX")/"
	return 0
}
HF="$BENCH_DIR/holdfast"
if [ -n "${HF_BIN:-}" ]; then
	cp "$HF_BIN" "$HF" # a prebuilt binary
else
	(cd "$ROOT" && go build -o "$HF" ./cmd/holdfast)
fi
HFOLD=""
if [ -n "${HF_OLD_BIN:-}" ]; then
	HFOLD="$BENCH_DIR/holdfast-old"
	cp "$HF_OLD_BIN" "$HFOLD"
fi

export HOLDFAST_PASSWORD=bench-pass RESTIC_PASSWORD=bench-pass BORG_PASSPHRASE=bench-pass
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR="$BENCH_DIR/borg-home" RESTIC_CACHE_DIR="$BENCH_DIR/restic-cache"
RESULTS="$BENCH_DIR/results.tsv"
: >"$RESULTS"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== preparing data ($(nproc) cores)" >&2
DATA_GO="$BENCH_DIR/data/go"
mkdir -p "$BENCH_DIR/data"
cp -a "$(go env GOROOT)" "$DATA_GO"
DATA_GEN="$BENCH_DIR/data/gen"
(cd "$ROOT" && go run ./bench/backup/gen -dir "$DATA_GEN" -size "$GEN_MIB") >&2

# timed LABEL CMD...: runs CMD, appends "LABEL seconds maxrss_kb user sys
# voluntary_switches involuntary_switches" to $TIMES.
timed() {
	local label=$1
	shift
	/usr/bin/time -f "%e %M %U %S %w %c" -o "$BENCH_DIR/time.out" bash -c '"$@"' _ "$@" >"$BENCH_DIR/cmd.out" 2>&1 || {
		echo "run.sh: $label failed: $*" >&2
		cat "$BENCH_DIR/cmd.out" >&2
		exit 1
	}
	echo "$label $(tail -1 "$BENCH_DIR/time.out")" >>"$TIMES"
}

# change1pct DIR N: appends a line to every 100th file (1% of the files).
change1pct() {
	find "$1" -type f | sort | awk 'NR % 100 == 0' | while read -r f; do
		echo "changed in round $2" >>"$f"
	done
}

# Each tool: init REPO, backup REPO DIR, restore REPO TARGET.
hf_init() { "$HF" --log-level warn init --repo "$1" >/dev/null; }
hf_backup() { "$HF" --log-level warn backup --repo "$1" "$2"; }
hf_restore() { "$HF" --log-level warn restore --repo "$1" latest --target "$2"; }
hfold_init() { "$HFOLD" --log-level warn init --repo "$1" >/dev/null; }
hfold_backup() { "$HFOLD" --log-level warn backup --repo "$1" "$2"; }
hfold_restore() { "$HFOLD" --log-level warn restore --repo "$1" latest --target "$2"; }
restic_init() { restic init -q -r "$1" >/dev/null; }
restic_backup() { restic backup -q -r "$1" "$2"; }
restic_restore() { restic restore -q -r "$1" latest --target "$2"; }
borg_init() { borg init -e repokey "$1"; }
borg_backup() { borg create "$1::{now:%Y-%m-%dT%H:%M:%S.%f}" "$2"; }
borg_restore() { (cd "$2" && borg extract "$1::$(borg list --last 1 --short "$1")"); }
export HF HFOLD BORG_DISPLAY_PASSPHRASE=no
export -f hf_init hf_backup hf_restore hfold_init hfold_backup hfold_restore restic_init restic_backup restic_restore borg_init borg_backup borg_restore

dispose() { # dispose DATASET DIR: the generated set has few files, delete it; retire a Go tree
	if [ "$1" = gen ]; then rm -rf "$2"; else retire "$2"; fi
}

run_tool() { # tool dataset dir run
	local tool=$1 ds=$2 dir=$3 run=$4
	local repo="$BENCH_DIR/repo-$tool" target="$BENCH_DIR/restore"
	rm -rf "$repo" "$BENCH_DIR/restic-cache" "$BENCH_DIR/borg-home"
	retire "$target"
	TIMES="$BENCH_DIR/times-$tool"
	: >"$TIMES"
	# borg create drops the files it reads from the page cache
	# (posix_fadvise DONTNEED), so the tool after it read the data from
	# disk and the others from memory; read the data first so that every
	# tool starts with it cached (WARM=0 leaves the cache as it is).
	[ "$WARM" = 1 ] && find "$dir" -type f -exec cat {} + >/dev/null
	"${tool}_init" "$repo" >/dev/null 2>&1
	sync
	timed initial "${tool}_backup" "$repo" "$dir"
	timed unchanged "${tool}_backup" "$repo" "$dir"
	change1pct "$dir" "$tool-$run"
	timed changed1pct "${tool}_backup" "$repo" "$dir"
	mkdir -p "$target"
	sync
	timed restore "${tool}_restore" "$repo" "$target"
	dispose "$ds" "$target"
	local size peak
	size=$(du -sb "$repo" | cut -f1)
	peak=$(awk 'BEGIN{m=0} {if ($3>m) m=$3} END{print m}' "$TIMES")
	while read -r label secs rss usr sys vcs ivcs; do
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "$label" "$secs" >>"$RESULTS"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "${label}_cpu" "$(echo "$usr + $sys" | bc)" >>"$RESULTS"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "${label}_user" "$usr" >>"$RESULTS"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "${label}_sys" "$sys" >>"$RESULTS"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "${label}_vcs" "$vcs" >>"$RESULTS"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" "${label}_ivcs" "$ivcs" >>"$RESULTS"
	done <"$TIMES"
	printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" repo_bytes "$size" >>"$RESULTS"
	printf '%s\t%s\t%s\t%s\t%s\n' "$ds" "$tool" "$run" peak_rss_kb "$peak" >>"$RESULTS"
	rm -rf "$repo"
	echo "   $ds $tool run $run: $(awk '{printf "%s %ss %sKB cpu %s+%s cs %s/%s; ", $1, $2, $3, $4, $5, $6, $7}' "$TIMES")size $size" >&2
}

for run in $(seq 1 "$RUNS"); do
	for ds in go gen; do
		dir=$DATA_GO
		[ "$ds" = gen ] && dir=$DATA_GEN
		# Rotate the order of the tools from run to run, so that none is
		# always the first after the data was written or the last of a round.
		tools=(hf restic borg)
		[ -n "$HFOLD" ] && tools=(hf hfold restic borg)
		k=$(((run - 1) % ${#tools[@]}))
		for tool in "${tools[@]:k}" "${tools[@]:0:k}"; do
			echo "== run $run, data $ds, $tool" >&2
			run_tool "$tool" "$ds" "$dir" "$run"
		done
		# File-system baseline for restore: copying the data set with cp -a.
		retire "$BENCH_DIR/restore"
		sync
		TIMES="$BENCH_DIR/times-cp"
		: >"$TIMES"
		timed cp cp -a "$dir" "$BENCH_DIR/restore"
		dispose "$ds" "$BENCH_DIR/restore"
		read -r _ secs _ <"$TIMES"
		printf '%s\t%s\t%s\t%s\t%s\n' "$ds" cp "$run" restore "$secs" >>"$RESULTS"
	done
done

# Aging: ten backups of the Go tree with 1% of files changed and a new
# directory added between them; restore the first and the newest snapshot.
if [ "$AGING" = 1 ]; then
	for tool in hf restic; do
		echo "== aging, $tool" >&2
		repo="$BENCH_DIR/repo-aging-$tool"
		rm -rf "$repo" "$BENCH_DIR/restic-cache"
		"${tool}_init" "$repo" >/dev/null 2>&1
		retire "$BENCH_DIR/data/aging"
		cp -a "$DATA_GO" "$BENCH_DIR/data/aging"
		first=""
		for i in $(seq 1 10); do
			"${tool}_backup" "$repo" "$BENCH_DIR/data/aging" >/dev/null 2>&1
			if [ -z "$first" ]; then
				case $tool in
				hf) first=$("$HF" --json snapshots --repo "$repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])') ;;
				restic) first=$(restic snapshots -q --json -r "$repo" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])') ;;
				esac
			fi
			change1pct "$BENCH_DIR/data/aging" "aging-$i"
			cp -a "$DATA_GO/src/fmt" "$BENCH_DIR/data/aging/src/fmt-copy-$i"
		done
		for r in $(seq 1 "$RUNS"); do
			order="first newest"
			[ $((r % 2)) = 0 ] && order="newest first" # alternate, so drift in machine load cancels
			for which in $order; do
				snap=latest
				[ "$which" = first ] && snap=$first
				target="$BENCH_DIR/restore"
				retire "$target"
				mkdir -p "$target"
				sync
				TIMES="$BENCH_DIR/times-aging"
				: >"$TIMES"
				case $tool in
				hf) timed "$which" "$HF" --log-level warn restore --repo "$repo" "$snap" --target "$target" ;;
				restic) timed "$which" restic restore -q -r "$repo" "$snap" --target "$target" ;;
				esac
				read -r _ secs _ <"$TIMES"
				printf 'aging\t%s\t%s\t%s\t%s\n' "$tool" "$r" "restore_$which" "$secs" >>"$RESULTS"
			done
		done
		rm -rf "$repo"
		retire "$BENCH_DIR/data/aging"
		retire "$BENCH_DIR/restore"
	done
fi

GO_MB=$(du -sb "$DATA_GO" | cut -f1)
echo "machine: $(nproc) cores; load average (1/5/15 min) at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "data: Go tree $(find "$DATA_GO" -type f | wc -l) files, $((GO_MB >> 20)) MiB; generated set $(find "$DATA_GEN" -type f | wc -l) files, $GEN_MIB MiB"
python3 - "$RESULTS" "$RUNS" "$GO_MB" "$((GEN_MIB << 20))" <<'EOF'
import sys, statistics, collections
path, runs, go_bytes, gen_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vals = collections.defaultdict(list)
for line in open(path):
    ds, tool, run, metric, v = line.split("\t")
    vals[(ds, tool, metric)].append(float(v))
med = {k: statistics.median(v) for k, v in vals.items()}
metrics = [("initial", "initial backup (s)"), ("unchanged", "backup, no change (s)"),
           ("changed1pct", "backup, 1% files changed (s)"), ("restore", "full restore (s)"),
           ("repo_bytes", "repository size (MiB)"), ("peak_rss_kb", "peak memory (MiB)"),
           ("initial_cpu", "initial backup, CPU (s)"), ("initial_user", "  of which user (s)"),
           ("initial_sys", "  of which system (s)"),
           ("initial_vcs", "  voluntary ctx switches"), ("initial_ivcs", "  involuntary ctx switches"),
           ("unchanged_cpu", "no-change backup, CPU (s)"),
           ("restore_cpu", "full restore, CPU (s)")]
for ds, title in (("go", "Go toolchain tree (GOROOT)"), ("gen", "generated set")):
    print(f"\n{title}: medians of {runs} runs")
    print(f"| {'figure':<30} | {'holdfast':>9} | {'hf old':>10} | {'restic':>9} | {'borg':>9} | {'restic/holdfast':>15} | {'restic/hf old':>17} | {'borg/holdfast':>13} |")
    print(f"|{'-'*32}|{'-'*11}|{'-'*12}|{'-'*11}|{'-'*11}|{'-'*17}|{'-'*19}|{'-'*15}|")
    for m, label in metrics:
        row = []
        for tool in ("hf", "hfold", "restic", "borg"):
            v = med.get((ds, tool, m))
            if v is not None and m == "repo_bytes":
                v /= 1 << 20
            if v is not None and m == "peak_rss_kb":
                v /= 1024
            row.append(v)
        def f(v):
            return f"{v:9.2f}" if v is not None else f"{'-':>9}"
        def ratio(a, b):
            return f"{a / b:.2f}x" if a and b else "-"
        print(f"| {label:<30} | {f(row[0])} | {f(row[1]):>10} | {f(row[2])} | {f(row[3])} | {ratio(row[2], row[0]):>15} | {ratio(row[2], row[1]):>17} | {ratio(row[3], row[0]):>13} |")
    if med.get((ds, "cp", "restore")):
        print(f"\nfile-system baseline: cp -a of the same data takes {med[(ds, 'cp', 'restore')]:.2f} s (a restore cannot beat the file system)")
    size = go_bytes if ds == "go" else gen_bytes
    for tool, name in (("hf", "holdfast"), ("hfold", "holdfast (old binary)")):
        if not med.get((ds, tool, "initial")):
            continue
        rate = size / med[(ds, tool, "initial")] / 1e6
        cpu = med.get((ds, tool, "initial_cpu"))
        print(f"\n{name}, initial backup of the {title}: {rate:.0f} MB/s wall clock = {rate / 450:.2f} of the 450 MB/s ceiling")
        if cpu:
            crate = size / (cpu / 2) / 1e6
            print(f"  CPU-bound rate on 2 free cores (size / (CPU seconds / 2)): {crate:.0f} MB/s = {crate / 450:.2f} of the ceiling")
if any(k[0] == "aging" for k in med):
    print(f"\nrestore as the repository ages (Go tree, 10 backups with changes between): medians of {runs}")
    print("| tool     | first snapshot (s) | newest snapshot (s) | newest/first |")
    print("|----------|--------------------|---------------------|--------------|")
    for tool, name in (("hf", "holdfast"), ("restic", "restic")):
        a, b = med.get(("aging", tool, "restore_first")), med.get(("aging", tool, "restore_newest"))
        if a and b:
            print(f"| {name:<8} | {a:18.2f} | {b:19.2f} | {b / a:11.2f}x |")
EOF
