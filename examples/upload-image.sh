#!/usr/bin/env bash
# Copies a local disk image into Azure as a page blob through a blobdisk mount, sparse:
# only the allocated parts are uploaded (qemu-img skips zeros), then waits until it is in Azure.
# usage: examples/upload-image.sh local.qcow2 /mnt/blobs/vms/disk.img
set -euo pipefail
qemu-img convert -p -O raw "$1" "$2"
"$(dirname "$0")/../bin/blobdisk" flush "$(df --output=target "$2" | tail -1)" "$2"
