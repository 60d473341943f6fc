#!/usr/bin/env bash
# Builds the root filesystem tarball of shoal's demo image from Debian's busybox-static.
#
#   deploy/build-demo-image.sh OUT.tar
#   shoal image import OUT.tar shoal/demo:latest
#
# The tree: /bin/busybox plus a symlink per applet in /bin, the usual empty mount points,
# /etc/passwd and /etc/group with root, nobody and `shoal` (uid 1000), and a web root at
# /var/www (static index.html and a CGI script that answers with the container's hostname,
# handy to see which replica served a request). Serve it with:
#   httpd -f -p 80 -h /var/www
#
# The tarball is deterministic (sorted names, mtime 0, numeric owner 0:0 except /home/shoal,
# fixed modes), so the same busybox always gives the same image id.
set -euo pipefail

usage() {
	echo "usage: $0 OUT.tar" >&2
	exit 2
}
[ $# -eq 1 ] || usage
out=$1
case $out in
-*) usage ;;
esac

# Debian's busybox-static installs a statically linked /bin/busybox; the dynamic `busybox`
# package would need a libc inside the image.
busybox=/bin/busybox
is_static() {
	[ -x "$1" ] || return 1
	# ldd exits non-zero for a static binary, hence the capture rather than a pipe.
	local verdict
	verdict=$(LC_ALL=C ldd "$1" 2>&1 || true)
	case $verdict in
	*"not a dynamic executable"* | *"statically linked"*) return 0 ;;
	*) return 1 ;;
	esac
}
if ! is_static "$busybox"; then
	if command -v apt-get >/dev/null 2>&1; then
		echo "installing busybox-static with apt-get" >&2
		if ! DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static >&2; then
			apt-get update >&2
			DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static >&2
		fi
	fi
	if ! is_static "$busybox"; then
		echo "error: $busybox is missing or not statically linked; install Debian's busybox-static" >&2
		exit 1
	fi
fi
case $(tar --version 2>/dev/null || true) in
*"GNU tar"*) ;;
*)
	echo "error: GNU tar is needed (for --sort, --mtime and --owner)" >&2
	exit 1
	;;
esac

umask 022
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

mkdir -p "$root"/{bin,dev,etc,home/shoal,proc,root,sys,tmp,var/www/cgi-bin}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

install -m 0755 "$busybox" "$root/bin/busybox"
"$busybox" --list | while read -r applet; do
	case $applet in
	busybox | "" | */*) continue ;;
	esac
	ln -s busybox "$root/bin/$applet"
done

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
shoal:x:1000:1000:shoal:/home/shoal:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
shoal:x:1000:
nogroup:x:65534:
EOF
: >"$root/etc/hostname"

cat >"$root/var/www/index.html" <<'EOF'
<!doctype html>
<html>
<head><title>shoal demo</title></head>
<body>
<h1>Hello from shoal</h1>
<p>This page is served by busybox httpd inside a shoal container.
<a href="/cgi-bin/hostname">/cgi-bin/hostname</a> tells which container answered.</p>
</body>
</html>
EOF
cat >"$root/var/www/cgi-bin/hostname" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "Hello from shoal: $(hostname)"
EOF
chmod 0755 "$root/var/www/cgi-bin/hostname"

# GNU format (no pax headers carrying atime/ctime) keeps the bytes reproducible.
tar_flags=(--format=gnu --sort=name --mtime=@0 --numeric-owner)
tmp_out="$out.tmp.$$"
LC_ALL=C tar "${tar_flags[@]}" --owner=0 --group=0 -C "$root" \
	--exclude=./home/shoal -cf "$tmp_out" .
# The `shoal` user's home is its own, so `-u shoal` containers have a writable home.
LC_ALL=C tar "${tar_flags[@]}" --owner=1000 --group=1000 -C "$root" \
	--no-recursion -rf "$tmp_out" ./home/shoal
mv -f "$tmp_out" "$out"
echo "wrote $out ($(tar -tf "$out" | wc -l) entries)" >&2
