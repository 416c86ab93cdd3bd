#!/usr/bin/env bash
# bench/lab/run.sh: how fast and how faithful is the lab's WAN emulator?
#
#   sudo bash bench/lab/run.sh            # RUNS=3 SECS=5 by default
#
# Measures, side by side in one run, with iperf3 (Debian package):
#   ceiling   the highest rate the emulator forwards (no rate limit set), and
#             the CPU it costs per Gbit/s (utime+stime of `holdfast lab up`),
#             against a plain veth pair between two namespaces (the kernel
#             alone, no emulation) as the baseline;
#   rate      iperf3 through a 100 Mbit/s lossless path, against the kernel's
#             tbf qdisc at the same rate on a veth pair (what one would use
#             for rate limits on a kernel without netem);
#   rtt       TCP's smoothed minimum RTT (tcp_info, via iperf3) on a path set
#             to 100 ms;
#   loss      one cubic stream through 100 Mbit/s, 40 ms, 1% loss, against
#             Mathis et al.'s MSS/RTT * 1.22/sqrt(p).
# Every figure is the median of RUNS runs. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
SECS=${SECS:-5}
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in iperf3 jq ip tc; do command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }; done

work=$(mktemp -d)
HF=$work/holdfast
go build -o "$HF" ./cmd/holdfast
LAB=bench$$
labpid=""

cleanup() {
  [ -n "$labpid" ] && kill -INT "$labpid" 2>/dev/null && wait "$labpid" 2>/dev/null || true
  ip netns del hfbench-veth-h0 2>/dev/null || true
  ip netns del hfbench-veth-h1 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) m=a[(NR+1)/2]; else m=(a[NR/2]+a[NR/2+1])/2; printf "%.2f\n", m}'; }
mbit() { jq '.end.sum_received.bits_per_second/1e6*10|round/10'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)

lab_up() { # args: lab up flags
  "$HF" lab up --name "$LAB" --interval 1h --quiet "$@" >"$work/lab.out" 2>"$work/lab.err" &
  labpid=$!
  for _ in $(seq 100); do grep -q "Ctrl-C" "$work/lab.out" 2>/dev/null && return 0; sleep 0.1; done
  echo "lab up did not start:" >&2; cat "$work/lab.err" >&2; exit 1
}
lab_down() { kill -INT "$labpid"; wait "$labpid" || true; labpid=""; }

# iperf NS_SERVER NS_CLIENT ADDR [client args...] -> JSON on stdout
iperf() {
  local srv=$1 cli=$2 addr=$3; shift 3
  ip netns exec "$srv" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
  local spid=$!
  local out=""
  for _ in $(seq 50); do
    out=$(ip netns exec "$cli" iperf3 -c "$addr" -J "$@" 2>/dev/null || true)
    [ -n "$out" ] && [ "$(jq -r '.error // empty' <<<"$out")" = "" ] && break
    sleep 0.2
  done
  wait "$spid" 2>/dev/null || true
  echo "$out"
}

veth_up() { # optional tbf rate on both ends
  ip netns add hfbench-veth-h0; ip netns add hfbench-veth-h1
  ip link add bv0 netns hfbench-veth-h0 type veth peer name bv1 netns hfbench-veth-h1
  ip -n hfbench-veth-h0 addr add 198.19.0.1/24 dev bv0
  ip -n hfbench-veth-h1 addr add 198.19.0.2/24 dev bv1
  for i in 0 1; do ip -n hfbench-veth-h$i link set lo up; ip -n hfbench-veth-h$i link set bv$i up; done
  if [ -n "${1:-}" ]; then
    for i in 0 1; do tc -n hfbench-veth-h$i qdisc add dev bv$i root tbf rate "$1" burst 32kb latency 20ms; done
  fi
}
veth_down() { ip netns del hfbench-veth-h0; ip netns del hfbench-veth-h1; }

row() { printf '%-44s %14s %14s %10s\n' "$@"; }

echo "lab emulator benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, kernel $(uname -r), runs=$RUNS secs=$SECS, load average at start: $(cut -d" " -f1-3 /proc/loadavg)"
echo

# --- ceiling: kernel veth vs emulator ---------------------------------------
veth=(); ceil=(); cpu=(); pct=()
for _ in $(seq "$RUNS"); do
  veth_up
  j=$(iperf hfbench-veth-h1 hfbench-veth-h0 198.19.0.2 -t "$SECS" -O 1)
  veth+=("$(mbit <<<"$j")")
  veth_down

  lab_up
  t0=$(cpu_ticks "$labpid"); s0=$(date +%s.%N)
  j=$(iperf "hflab-$LAB-h1" "hflab-$LAB-h0" 198.18.0.2 -t "$SECS")
  t1=$(cpu_ticks "$labpid"); s1=$(date +%s.%N)
  lab_down
  mbit=$(mbit <<<"$j")
  gbits=$(jq '.end.sum_received.bytes*8/1e9' <<<"$j")
  ceil+=("$mbit")
  cpu+=("$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v g="$gbits" 'BEGIN {printf "%.2f", t/hz/g}')")
  pct+=("$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v a="$s0" -v b="$s1" 'BEGIN {printf "%.0f", 100*t/hz/(b-a)}')")
done
jumbo=()
for _ in $(seq "$RUNS"); do
  lab_up --mtu 9000
  j=$(iperf "hflab-$LAB-h1" "hflab-$LAB-h0" 198.18.0.2 -t "$SECS" -O 1)
  lab_down
  jumbo+=("$(mbit <<<"$j")")
done
m_jumbo=$(printf '%s\n' "${jumbo[@]}" | median)
m_veth=$(printf '%s\n' "${veth[@]}" | median)
m_ceil=$(printf '%s\n' "${ceil[@]}" | median)
m_cpu=$(printf '%s\n' "${cpu[@]}" | median)
m_pct=$(printf '%s\n' "${pct[@]}" | median)

# --- rate fidelity: emulator vs tbf -----------------------------------------
lr=(); tr=()
for _ in $(seq "$RUNS"); do
  lab_up --rate 100Mbit --rtt 20ms
  j=$(iperf "hflab-$LAB-h1" "hflab-$LAB-h0" 198.18.0.2 -t "$SECS" -O 1)
  lab_down
  lr+=("$(mbit <<<"$j")")
  veth_up 100mbit
  j=$(iperf hfbench-veth-h1 hfbench-veth-h0 198.19.0.2 -t "$SECS" -O 1)
  veth_down
  tr+=("$(mbit <<<"$j")")
done
m_lr=$(printf '%s\n' "${lr[@]}" | median)
m_tr=$(printf '%s\n' "${tr[@]}" | median)

# --- RTT ---------------------------------------------------------------------
rtt=()
for _ in $(seq "$RUNS"); do
  lab_up --rtt 100ms
  j=$(iperf "hflab-$LAB-h1" "hflab-$LAB-h0" 198.18.0.2 -t 2 -b 1M)
  lab_down
  rtt+=("$(jq '.end.streams[0].sender.min_rtt/1000' <<<"$j")")
done
m_rtt=$(printf '%s\n' "${rtt[@]}" | median)

# --- single cubic stream under 1% loss vs Mathis -----------------------------
ls=(); lp=()
for _ in $(seq "$RUNS"); do
  lab_up --rate 100Mbit --rtt 40ms --loss 1%
  j=$(iperf "hflab-$LAB-h1" "hflab-$LAB-h0" 198.18.0.2 -t "$SECS" -O 1 -C cubic)
  lab_down
  ls+=("$(mbit <<<"$j")")
done
m_ls=$(printf '%s\n' "${ls[@]}" | median)
mathis=$(awk 'BEGIN {printf "%.2f", 1448*8/0.040*1.22/sqrt(0.01)/1e6}')

row "measure" "lab" "baseline" "lab/base"
row "--------------------------------------------" "--------------" "--------------" "----------"
row "ceiling, MTU 1500, Mbit/s (base: veth)" "$m_ceil" "$m_veth" "$(awk -v a="$m_ceil" -v b="$m_veth" 'BEGIN {printf "%.2f", a/b}')"
row "ceiling, MTU 9000, Mbit/s (base: veth)" "$m_jumbo" "$m_veth" "$(awk -v a="$m_jumbo" -v b="$m_veth" 'BEGIN {printf "%.2f", a/b}')"
row "emulator CPU, s per Gbit (one core = 1 s/s)" "$m_cpu" "-" "-"
row "emulator CPU at ceiling, % of one core" "$m_pct" "-" "-"
row "100 Mbit/s path, iperf3 Mbit/s (base: tbf)" "$m_lr" "$m_tr" "$(awk -v a="$m_lr" -v b="$m_tr" 'BEGIN {printf "%.2f", a/b}')"
row "  vs set rate (goodput 1448/1500 = 0.965)" "$(awk -v a="$m_lr" 'BEGIN {printf "%.3f", a/100}')" "$(awk -v a="$m_tr" 'BEGIN {printf "%.3f", a/100}')" "-"
row "rtt 100ms path, TCP min RTT ms (set 100)" "$m_rtt" "-" "$(awk -v a="$m_rtt" 'BEGIN {printf "%.3f", a/100}')"
row "cubic, 1% loss, 40ms, Mbit/s (base: Mathis)" "$m_ls" "$mathis" "$(awk -v a="$m_ls" -v b="$mathis" 'BEGIN {printf "%.2f", a/b}')"
echo
echo "runs: ceiling ${ceil[*]} | mtu9000 ${jumbo[*]} | veth ${veth[*]} | cpu s/Gbit ${cpu[*]} | lab 100M ${lr[*]} | tbf ${tr[*]} | rtt ${rtt[*]} | loss ${ls[*]}"
half=$(awk -v c="$m_ceil" 'BEGIN {printf "%d", c/2}')
echo "run scenarios at no more than half the ceiling: about $half Mbit/s in total on this machine"
echo "load average at end: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine lowers the ceiling)"
