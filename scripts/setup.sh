#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine with Node 20 lacks for blobdisk, then the npm
# dependencies (which builds dist/). With --test, also the tools the end-to-end tests drive.
set -euo pipefail
cd "$(dirname "$0")/.."

# blobdisk's FUSE binding builds against libfuse 3 in npm install (pkg-config, a C compiler).
# fuse3 brings fusermount3 for mounts by other users than root; it replaces the package fuse
# (apt removes that) and keeps a fusermount link, which fuse-native, the benchmark's
# baseline, still calls.
packages=(fuse3 libfuse3-dev pkg-config build-essential)
# The end-to-end tests drive disk tools, and boot a VM from a blob under libvirt; the
# benchmark's fuse-native baseline loads libfuse2.
if [ "${1:-}" = "--test" ]; then
  packages+=(libfuse2 qemu-utils fio e2fsprogs util-linux systemd openssl qemu-system-x86 libvirt-daemon-system libvirt-clients libxml2-utils linux-image-cloud-amd64 busybox-static cpio)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "blobdisk setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
  echo "blobdisk setup: /dev/fuse is missing; load the fuse module (modprobe fuse) or give the container --device /dev/fuse" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm run --silent build
fi
