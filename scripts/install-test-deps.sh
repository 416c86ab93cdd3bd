#!/usr/bin/env bash
# Installs the Debian packages holdfast's tests drive as real peers, when they
# are missing. Safe to run again: it installs nothing that is already there.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-system-x86_64]=qemu-system-x86
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdfuse]=libnbd-bin
  [fio]=fio
  [fusermount3]=fuse3
  [mkfs.ext4]=e2fsprogs
  [restic]=restic
  [aria2c]=aria2
  [curl]=curl
  [python3]=python3
  [rsync]=rsync
)

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "test dependencies: all present"
  exit 0
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "test dependencies missing: $pkgs" >&2
  echo "run as root (or: sudo apt-get install $pkgs); tests that need them will skip" >&2
  exit 0
fi
echo "installing test dependencies: $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
