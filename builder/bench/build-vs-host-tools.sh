#!/usr/bin/env bash
# Benchmark (not a test): `labimg build --profile proxmox` from a warm cache
# against the classic host-tool pipeline assembling the same staging tree:
# mksquashfs + veritysetup, cpio+zstd, mkfs.vfat+mcopy, sfdisk, dd, xz -T0, qemu-img.
# Both run in the same session on the same machine; the ratio is what matters.
#
#   bash builder/bench/build-vs-host-tools.sh [profile]   (default: proxmox)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:-proxmox}
work=$(mktemp -d /tmp/labimg-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p labimg
labimg=target/release/labimg
stand_in=qemu-tests/stand-in/k3s

echo "# warm-up build (fills the download cache; not timed)"
$labimg build --profile "$profile" --k3s-binary "$stand_in" --out "$work/warm" >/dev/null 2>"$work/warm.log" \
    || { tail -20 "$work/warm.log" >&2; exit 1; }
rm -rf "$work/warm"

echo "# labimg build, warm cache"
t0=$(date +%s.%N)
$labimg build --profile "$profile" --k3s-binary "$stand_in" --out "$work/labimg" 2>"$work/labimg.log" >/dev/null \
    || { tail -20 "$work/labimg.log" >&2; exit 1; }
t1=$(date +%s.%N)
labimg_s=$(echo "$t1 - $t0" | bc)
grep -E "done in" "$work/labimg.log" | sed 's/^/  /' || true

echo "# the same staging trees on disk for the host tools (not timed)"
out="$work/labimg"
name=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["profile"])' "$out/manifest.json")
unsquashfs -q -d "$work/root" "$out/netboot/root.squashfs" >/dev/null
mkdir -p "$work/initrd" && (cd "$work/initrd" && zstd -dc "$out/netboot/initrd.img" | cpio -idm --quiet)
qemu-img convert -O raw "$out/$name.qcow2" "$work/ref.raw"
esp_start=$(sfdisk --json "$work/ref.raw" | python3 -c 'import json,sys;p=json.load(sys.stdin)["partitiontable"]["partitions"];print(p[0]["start"])')
esp_size=$(sfdisk --json "$work/ref.raw" | python3 -c 'import json,sys;p=json.load(sys.stdin)["partitiontable"]["partitions"];print(p[0]["size"])')
dd if="$work/ref.raw" of="$work/ref-esp.img" bs=512 skip="$esp_start" count="$esp_size" status=none
mkdir -p "$work/esp" && mcopy -s -n -i "$work/ref-esp.img" ::/* "$work/esp/"
sfdisk -d "$work/ref.raw" | grep -v -E '^(label-id|device|first-lba|last-lba|sector-size):' > "$work/layout.sfdisk"
disk_bytes=$(stat -c %s "$work/ref.raw")
rm -f "$work/ref.raw"

echo "# host-tool pipeline"
h="$work/host"; mkdir -p "$h"
# Per-step times, to set beside labimg's own "done in" lines.
lap_t=$(date +%s.%N)
lap() { local t; t=$(date +%s.%N); printf '  %-28s %7.1f s\n' "$1" "$(echo "$t - $lap_t" | bc)"; lap_t=$t; }
t0=$(date +%s.%N)
(cd "$work/initrd" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | zstd -19 -q -T0 > "$h/initrd.img")
lap "cpio + zstd -19 (initramfs)"
mksquashfs "$work/root" "$h/root.squashfs" -comp zstd -b 128K -noappend -all-root -quiet >/dev/null
# dm-verity hash tree appended after the 4 KiB-padded squashfs, as labimg's root image has it.
sq_bytes=$(stat -c %s "$h/root.squashfs")
hash_offset=$(( (sq_bytes + 4095) / 4096 * 4096 ))
truncate -s "$hash_offset" "$h/root.squashfs"
veritysetup format --hash-offset="$hash_offset" --data-blocks=$((hash_offset / 4096)) \
    "$h/root.squashfs" "$h/root.squashfs" >/dev/null
lap "mksquashfs + veritysetup"
mkfs.vfat -F 32 -n LABIMG-ESP -C "$h/esp.img" $((esp_size / 2)) >/dev/null
mcopy -s -i "$h/esp.img" "$work/esp/"* ::/
lap "mkfs.vfat + mcopy (ESP)"
truncate -s "$disk_bytes" "$h/disk.raw"
sfdisk -q "$h/disk.raw" < "$work/layout.sfdisk"
root_start=$(sfdisk --json "$h/disk.raw" | python3 -c 'import json,sys;p=json.load(sys.stdin)["partitiontable"]["partitions"];print(p[1]["start"])')
dd if="$h/esp.img" of="$h/disk.raw" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
dd if="$h/root.squashfs" of="$h/disk.raw" bs=512 seek="$root_start" conv=notrunc,sparse status=none
lap "sfdisk + dd (GPT disk)"
xz -T0 -6 -k "$h/disk.raw"
lap "xz -T0 -6 (raw.xz)"
qemu-img convert -O qcow2 "$h/disk.raw" "$h/disk.qcow2"
lap "qemu-img (qcow2)"
t1=$(date +%s.%N)
host_s=$(echo "$t1 - $t0" | bc)

printf 'labimg build (resolve+verify+unpack+all outputs): %8.1f s\n' "$labimg_s"
printf 'host tools (from a ready staging tree):            %8.1f s\n' "$host_s"
printf 'ratio labimg / host tools:                          %8.2f\n' "$(echo "$labimg_s / $host_s" | bc -l)"
