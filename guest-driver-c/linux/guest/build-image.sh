#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds memout's Linux test guest from Debian packages only (apt, no other downloads):
#   OUT/vmlinuz       the Debian cloud kernel (linux-image-cloud-amd64), unpacked, not installed
#   OUT/memout.ko     built against that kernel's headers
#   OUT/initrd.cpio.gz  busybox-static, memout.ko, memout-test, ./init, and the kernel's
#                     virtio-balloon modules (the baseline of `memout bench linux-free`)
# Installs what is missing (qemu-system-x86, busybox-static, linux-headers-cloud-amd64, cpio).
# Cached: does nothing if its inputs did not change. Usage: build-image.sh OUT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
linux="$(dirname "$here")"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
# One build at a time (test binaries and tools may ask at once).
exec 9>"$out/.lock"
flock 9

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
ls -d /lib/modules/*-cloud-amd64/build >/dev/null 2>&1 || need+=(linux-headers-cloud-amd64)
if [ ${#need[@]} -gt 0 ]; then
	echo "build-image: installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
kver="$(ls /lib/modules | grep -- '-cloud-amd64$' | sort -V | tail -1)"

stamp="$( (echo "$kver"; cat "$0" "$here"/init "$here"/*.c "$linux"/*.c "$linux"/*.h \
	"$linux"/Kbuild "$linux"/../include/memout_abi.h) | sha256sum | cut -d' ' -f1)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initrd.cpio.gz" ]; then
	exit 0
fi

# The kernel the headers belong to, unpacked from its package, and the virtio modules the
# virtio-balloon baseline loads (in load order).
virtio_mods="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon"
if [ ! -f "$out/vmlinuz-$kver" ] || [ ! -f "$out/kmod-$kver/virtio_balloon.ko" ]; then
	rm -rf "$out/deb" && mkdir -p "$out/deb"
	(cd "$out/deb" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$kver" >&2)
	dpkg-deb -x "$out"/deb/linux-image-"$kver"_*.deb "$out/deb/root"
	cp "$out/deb/root/boot/vmlinuz-$kver" "$out/vmlinuz-$kver"
	rm -rf "$out/kmod-$kver" && mkdir -p "$out/kmod-$kver"
	for m in $virtio_mods; do
		f="$(find "$out/deb/root/lib/modules/$kver" -name "$m.ko*" | head -1)"
		[ -n "$f" ] || { echo "build-image: no $m module in linux-image-$kver" >&2; exit 1; }
		case "$f" in
		*.xz) xz -dc "$f" > "$out/kmod-$kver/$m.ko" ;;
		*) cp "$f" "$out/kmod-$kver/$m.ko" ;;
		esac
	done
	rm -rf "$out/deb"
fi
ln -sf "vmlinuz-$kver" "$out/vmlinuz"

# The module, built out of the source tree.
rm -rf "$out/src" && mkdir -p "$out/src/linux" "$out/src/include"
cp "$linux"/*.c "$linux"/*.h "$linux"/Kbuild "$out/src/linux/"
cp "$linux"/../include/memout_abi.h "$out/src/include/"
make -s -C "/lib/modules/$kver/build" M="$out/src/linux" modules >&2
cp "$out/src/linux/memout.ko" "$out/memout.ko"

# The initramfs.
root="$out/root"
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys}
cp /bin/busybox "$root/bin/busybox"
for app in $("$root/bin/busybox" --list); do
	[ "$app" = busybox ] || ln -s busybox "$root/bin/$app"
done
gcc -static -O2 -Wall -Werror -o "$root/memout-test" "$here/memout_test.c"
cp "$here/init" "$root/init"
cp "$out/memout.ko" "$root/memout.ko"
mkdir -p "$root/lib/virtio"
for m in $virtio_mods; do cp "$out/kmod-$kver/$m.ko" "$root/lib/virtio/"; done
echo "$virtio_mods" > "$root/lib/virtio/order"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.cpio.gz"
echo "$stamp" > "$out/stamp"
