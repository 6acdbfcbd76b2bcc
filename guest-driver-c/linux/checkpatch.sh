#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Runs the kernel's checkpatch.pl (--strict) over memout.ko's sources and the guest test
# program. checkpatch comes from Debian's linux-source-6.1 package (apt only), extracted once
# under OUT. Usage: checkpatch.sh OUT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
cp="$out/scripts/checkpatch.pl"
if [ ! -f "$cp" ]; then
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root linux-source-6.1 >&2)
	dpkg-deb --fsys-tarfile "$tmp"/linux-source-6.1_*.deb |
		tar -x -C "$tmp" ./usr/src/linux-source-6.1.tar.xz
	xz -dc "$tmp/usr/src/linux-source-6.1.tar.xz" |
		tar -x -C "$tmp" linux-source-6.1/scripts/checkpatch.pl \
			linux-source-6.1/scripts/spelling.txt \
			linux-source-6.1/scripts/const_structs.checkpatch
	mkdir -p "$out/scripts"
	cp "$tmp"/linux-source-6.1/scripts/{checkpatch.pl,spelling.txt,const_structs.checkpatch} \
		"$out/scripts/"
fi
cd "$here"
# Build products (memout.mod.c) are not sources.
mapfile -t src < <(ls ./*.c ./*.h guest/*.c | grep -v "\.mod\.c$")
perl "$cp" --no-tree --strict --quiet -f "${src[@]}"
