#!/bin/bash
# Build the vfs-agent .deb from this checkout (committed files plus working-tree changes and
# new untracked files, never ignored ones) in a temporary directory; the checkout is not
# touched. Needs the Build-Depends of packaging/debian/control (see HOST_DEBS in the Makefile).
#
#   packaging/build-deb.sh OUTDIR      -> OUTDIR/vfs-agent_<version>_all.deb
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
outdir=$(mkdir -p "$1" && cd "$1" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packaging/export-tree.sh
. "$here/packaging/export-tree.sh"

for tool in dpkg-buildpackage dh dh_python3; do
	command -v "$tool" >/dev/null || {
		echo "$0: $tool is missing: apt-get install dpkg-dev debhelper dh-python" \
			"pybuild-plugin-pyproject (or make host-deps)" >&2
		exit 1
	}
done

work=$(mktemp -d /tmp/vfs-agent-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
export_tree "$here" "$work/vfs-agent"
cp -a "$work/vfs-agent/packaging/debian" "$work/vfs-agent/debian"

# A clean environment: no virtualenv, no user site, the system python3.
(
	cd "$work/vfs-agent"
	env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LANG=C.UTF-8 \
		dpkg-buildpackage -us -uc -b
) >"$work/build.log" 2>&1 || {
	tail -n 60 "$work/build.log" >&2
	echo "$0: dpkg-buildpackage failed (last lines above)" >&2
	exit 1
}

shopt -s nullglob
debs=("$work"/*.deb)
[ ${#debs[@]} -eq 1 ] || { echo "$0: expected one .deb, got: ${debs[*]:-none}" >&2; exit 1; }
cp "${debs[0]}" "$outdir/"
echo "$outdir/$(basename "${debs[0]}")"
