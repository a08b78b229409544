# Sourced by build-deb.sh and build-rpm.sh.
#
# export_tree CHECKOUT DEST: copy what a build needs from a checkout into DEST: the files git
# tracks (as they are in the working tree, with uncommitted changes) plus untracked files that
# are not ignored. Ignored build output (.venv, build/, *.egg-info, caches) never comes along,
# symlinks stay symlinks, and files deleted in the working tree stay deleted.
export_tree() {
	local checkout=$1 dest=$2
	mkdir -p "$dest"
	git -C "$checkout" ls-files -z --cached --others --exclude-standard |
		(
			cd "$checkout"
			while IFS= read -r -d '' f; do
				if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
			done
		) |
		tar -C "$checkout" --null --no-recursion -T - -cf - |
		tar -C "$dest" -xf -
}
