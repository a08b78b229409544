#!/bin/bash
# Build the vfs-agent .rpm (noarch) from this checkout, like build-deb.sh: committed files plus
# working-tree changes and new untracked files, never ignored ones, in a temporary directory;
# the checkout is not touched. Works with Debian's `rpm` package (see HOST_DEBS in the Makefile).
#
#   packaging/build-rpm.sh OUTDIR      -> OUTDIR/vfs-agent-<version>-1.noarch.rpm
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
outdir=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
spec=$here/packaging/rpm/vfs-agent.spec
# shellcheck source=packaging/export-tree.sh
. "$here/packaging/export-tree.sh"

command -v rpmbuild >/dev/null || {
	echo "$0: rpmbuild is missing: apt-get install rpm (or make host-deps)" >&2
	exit 1
}
/usr/bin/python3 -c 'import build, installer, setuptools, wheel' 2>/dev/null || {
	echo "$0: the system python3 lacks build, installer, setuptools or wheel:" \
		"apt-get install python3-build python3-installer python3-setuptools python3-wheel" >&2
	exit 1
}

version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
work=$(mktemp -d /tmp/vfs-agent-rpm.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rpmbuild/SOURCES"
export_tree "$here" "$work/vfs-agent-$version"
tar -C "$work" -czf "$work/rpmbuild/SOURCES/vfs-agent-$version.tar.gz" "vfs-agent-$version"

# A clean environment: no virtualenv, no user site, the system python3. --nodeps: Debian's
# rpm database does not know the Debian packages that provide the BuildRequires.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LANG=C.UTF-8 \
	rpmbuild -bb --nodeps --define "_topdir $work/rpmbuild" "$spec" \
	>"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "$0: rpmbuild failed (last lines above)" >&2
	exit 1
}

shopt -s nullglob
rpms=("$work"/rpmbuild/RPMS/noarch/*.rpm)
[ ${#rpms[@]} -eq 1 ] || { echo "$0: expected one .rpm, got: ${rpms[*]:-none}" >&2; exit 1; }
cp "${rpms[0]}" "$outdir/"
echo "$outdir/$(basename "${rpms[0]}")"
