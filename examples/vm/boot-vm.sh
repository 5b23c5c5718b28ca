#!/usr/bin/env bash
# Boots a tiny Linux guest under libvirt from a page blob in a blobdisk mount, and has it
# write, fsync and read back a pattern on its disk before it powers off.
#
#   examples/vm/boot-vm.sh [--build] /mnt/blobs/vms/vm.img
#
# --build (or a missing image) first makes the image: a 256 MiB page blob holding an ext4
# root file system with busybox and an init that does the pattern check. Everything comes
# from Debian's packages (linux-image-cloud-amd64, busybox-static, e2fsprogs, cpio): the
# kernel and a small initramfs that loads the virtio modules stay in $BLOBDISK_VM_DIR
# (default /var/lib/blobdisk-vm); the root file system is on the blob.
#
# The guest runs as libvirt's QEMU user, so the mount needs
#   blobdisk mount /mnt/blobs --allow-other --uid libvirt-qemu --gid libvirt-qemu
# It uses KVM when /dev/kvm is there and works, TCG otherwise (BLOBDISK_VM_ACCEL=kvm|tcg
# decides). It prints, one per line:
#   accel tcg
#   qemu-user libvirt-qemu         (the user QEMU ran as)
#   boot-to-init-seconds 3.12      (from `virsh start` until init on the blob runs)
#   guest-uptime-at-init 1.87      (the guest kernel's own uptime then)
#   found-pattern <sha256> ok      (a pattern an earlier boot left, read back intact)
#   pattern <sha256>               (the pattern this boot wrote, fsynced and read back)
# and exits 0 only when the guest said everything it read back was right.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build=0
if [ "${1:-}" = "--build" ]; then build=1; shift; fi
image="${1:?usage: boot-vm.sh [--build] IMAGE-IN-A-BLOBDISK-MOUNT}"
image="$(realpath -m "$image")"
dir="${BLOBDISK_VM_DIR:-/var/lib/blobdisk-vm}"
name="${BLOBDISK_VM_NAME:-blobdisk-vm-$$}"
timeout="${BLOBDISK_VM_TIMEOUT:-300}"
virsh=(virsh -q -c qemu:///system)

fail() { echo "boot-vm: $*" >&2; exit 1; }
for tool in virsh busybox cpio mkfs.ext4 gzip; do
  command -v "$tool" >/dev/null || fail "$tool is missing; apt-get install libvirt-clients libvirt-daemon-system qemu-system-x86 busybox-static cpio e2fsprogs"
done
kernel="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)"
[ -n "$kernel" ] || fail "no kernel in /boot; apt-get install linux-image-cloud-amd64"
release="${kernel#/boot/vmlinuz-}"
modules="/lib/modules/$release/kernel/drivers"
[ -f "$modules/block/virtio_blk.ko" ] || fail "no virtio_blk module for $release (compressed modules are not supported)"

# The kernel, the initramfs and the console log: QEMU, running as libvirt-qemu, reads them.
mkdir -p "$dir"
chmod 755 "$dir"
if [ ! -f "$dir/initrd.gz" ] || [ "$kernel" -nt "$dir/initrd.gz" ] || [ "$0" -nt "$dir/initrd.gz" ]; then
  work="$(mktemp -d)"
  mkdir -p "$work"/{bin,dev,proc,sys,newroot,lib/modules}
  cp /bin/busybox "$work/bin/busybox"
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    cp "$modules/$m.ko" "$work/lib/modules/"
  done
  cat > "$work/init" <<'INIT'
#!/bin/busybox sh
# Loads the virtio disk driver, mounts the blob's file system and starts its init.
b=/bin/busybox
$b mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  $b insmod /lib/modules/$m.ko
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do $b sleep 0.05; i=$((i + 1)); done
if ! $b mount -t ext4 /dev/vda /newroot; then
  echo "BLOBDISK-FAIL cannot mount /dev/vda"
  $b poweroff -f
fi
$b mount --move /dev /newroot/dev
exec $b switch_root /newroot /sbin/init
INIT
  chmod 755 "$work/init"
  (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$dir/initrd.gz.new"
  mv "$dir/initrd.gz.new" "$dir/initrd.gz"
  rm -rf "$work"
fi
cp "$kernel" "$dir/vmlinuz"
chmod 644 "$dir/vmlinuz" "$dir/initrd.gz"

if [ "$build" = 1 ] || [ ! -e "$image" ]; then
  root="$(mktemp -d)"
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp}
  cp /bin/busybox "$root/bin/busybox"
  for applet in sh mount umount cat cut dd sha256sum sync sleep echo poweroff; do ln -s busybox "$root/bin/$applet"; done
  cat > "$root/sbin/init" <<'INIT'
#!/bin/busybox sh
# Runs from the blob: checks what an earlier boot left, writes a new pattern with fsync,
# drops the page cache, reads it back from the disk and powers off.
export PATH=/bin
mount -t proc proc /proc
echo "BLOBDISK-INIT $(cut -d' ' -f1 /proc/uptime)"
if [ -f /pattern ]; then
  found=$(sha256sum /pattern | cut -d' ' -f1)
  if [ "$found" = "$(cat /pattern.sha256)" ]; then echo "BLOBDISK-FOUND $found ok"; else echo "BLOBDISK-FOUND $found expected $(cat /pattern.sha256)"; fi
fi
dd if=/dev/urandom of=/pattern bs=65536 count=64 conv=fsync 2>/dev/null
sha256sum /pattern | cut -d' ' -f1 > /pattern.sha256
sync
echo 3 > /proc/sys/vm/drop_caches
back=$(sha256sum /pattern | cut -d' ' -f1)
echo "BLOBDISK-PATTERN $(cat /pattern.sha256) $back"
mount -o remount,ro /
sync
poweroff -f
INIT
  chmod 755 "$root/sbin/init"
  rm -f "$image"
  truncate -s 256M "$image"
  mkfs.ext4 -q -F -d "$root" "$image"
  rm -rf "$root"
fi

# Debian's libvirt runs QEMU as libvirt-qemu: say how to mount when it could not open the image.
qemu_user="${BLOBDISK_VM_QEMU_USER:-libvirt-qemu}"
if [ "$(id -u)" = 0 ] && id "$qemu_user" >/dev/null 2>&1 && ! runuser -u "$qemu_user" -- test -r "$image" -a -w "$image"; then
  fail "$qemu_user (libvirt's QEMU) cannot read and write $image; mount with: blobdisk mount MOUNTPOINT --allow-other --uid $qemu_user --gid $qemu_user (and every directory above the mountpoint must be searchable by it)"
fi

accel="${BLOBDISK_VM_ACCEL:-}"
if [ -z "$accel" ]; then
  if [ -e /dev/kvm ]; then accel=kvm; else accel=tcg; fi
fi

console="$dir/$name.console"
boot() { # $1: kvm or tcg; prints the seconds from start to init, or fails
  local type=qemu
  [ "$1" = kvm ] && type=kvm
  rm -f "$console"
  sed -e "s|<domain type='qemu'>|<domain type='$type'>|" \
      -e "s|<name>blobdisk-vm</name>|<name>$name</name>|" \
      -e "s|/var/lib/blobdisk-vm/vmlinuz|$dir/vmlinuz|" \
      -e "s|/var/lib/blobdisk-vm/initrd.gz|$dir/initrd.gz|" \
      -e "s|/var/lib/blobdisk-vm/console.log|$console|" \
      -e "s|/mnt/blobs/vms/vm.img|$image|" \
      "$here/domain.xml" > "$dir/$name.xml"
  "${virsh[@]}" define "$dir/$name.xml" >/dev/null
  local start now state
  start=$(date +%s.%N)
  "${virsh[@]}" start "$name" >/dev/null || { "${virsh[@]}" undefine "$name" >/dev/null; return 1; }
  while :; do
    now=$(date +%s.%N)
    if [ -z "${init:-}" ] && grep -q '^BLOBDISK-INIT' "$console" 2>/dev/null; then
      init=$(awk -v a="$now" -v b="$start" 'BEGIN { printf "%.3f", a - b }')
      user=$(ps -o user= -p "$(cat "/run/libvirt/qemu/$name.pid" 2>/dev/null)" 2>/dev/null || echo unknown)
    fi
    state=$("${virsh[@]}" domstate "$name" 2>/dev/null || echo gone)
    case "$state" in
      "shut off"*|gone) break ;;
      paused*|crashed*) [ -z "${init:-}" ] && { "${virsh[@]}" destroy "$name" >/dev/null 2>&1 || true; break; } ;;
    esac
    if awk -v a="$now" -v b="$start" -v t="$timeout" 'BEGIN { exit !(a - b > t) }'; then
      "${virsh[@]}" destroy "$name" >/dev/null 2>&1 || true
      echo "boot-vm: the guest did not power off within $timeout s" >&2
      break
    fi
    sleep 0.05
  done
  "${virsh[@]}" undefine "$name" >/dev/null 2>&1 || true
  rm -f "$dir/$name.xml"
  [ -n "${init:-}" ] || return 1
  echo "$init ${user:-unknown}"
}

if ! init=$(boot "$accel"); then
  if [ "$accel" = kvm ] && [ -z "${BLOBDISK_VM_ACCEL:-}" ]; then
    echo "boot-vm: the guest did not start under KVM; trying TCG (software emulation)" >&2
    accel=tcg
    init=$(boot tcg) || true
  fi
fi
echo "accel $accel"
if [ -z "${init:-}" ]; then
  echo "boot-vm: the guest never reached init; its console:" >&2
  cat "$console" >&2 2>/dev/null || true
  exit 1
fi
set -- $init
echo "qemu-user $2"
printf 'boot-to-init-seconds %.2f\n' "$1"
echo "guest-uptime-at-init $(grep -m1 '^BLOBDISK-INIT' "$console" | cut -d' ' -f2 | tr -d '\r')"
status=0
if found=$(grep -m1 '^BLOBDISK-FOUND' "$console" | tr -d '\r'); [ -n "$found" ]; then
  set -- $found
  echo "found-pattern $2 $3"
  [ "$3" = ok ] || status=1
fi
pattern=$(grep -m1 '^BLOBDISK-PATTERN' "$console" | tr -d '\r' || true)
set -- $pattern
if [ -z "$pattern" ] || [ "${2:-}" != "${3:-}" ]; then
  echo "boot-vm: the guest did not read back the pattern it wrote; its console:" >&2
  cat "$console" >&2
  exit 1
fi
echo "pattern $2"
rm -f "$console"
exit $status
