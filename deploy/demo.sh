#!/usr/bin/env bash
# shoal's main job on one machine, end to end: build shoal, start a node daemon on a private
# data root and socket, build the demo image from Debian's busybox-static, import it, run
# containers from it and show what they print. Everything it starts it stops again.
#
# Until the swarm lands (issue 4) this is a single-node demo; it becomes the multi-node
# cluster demo then.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if ! [ -x /bin/busybox ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq busybox-static
fi
cargo build --release --locked --bins
bin="$repo/target/release"

work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
export SHOAL_HOST="unix://$work/shoal.sock"
shoal() { "$bin/shoal" "$@"; }
cleanup() {
  set +e
  for id in $(shoal container ls -aq 2>/dev/null); do shoal container rm -f "$id" >/dev/null; done
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/shoald" --data-root "$work/root" -H "$SHOAL_HOST" 2>"$work/shoald.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$work/shoal.sock" ] && break; sleep 0.05; done

step() { printf '\n\033[1m$ shoal %s\033[0m\n' "$*"; shoal "$@"; }

"$repo/deploy/build-demo-image.sh" "$work/demo.tar" >/dev/null
step image import "$work/demo.tar" shoal/demo:latest
step image ls
step container run --rm --hostname demo shoal/demo sh -c 'echo "Hello from $(hostname), pid $$"; id'
step container run -d --name web --memory 64m shoal/demo httpd -f -p 8080 -h /var/www
step container ls
step container exec web wget -qO- http://127.0.0.1:8080/
step container stats --no-stream
step container stop -t 1 web
step container ls -a
step container rm web
echo
echo "demo finished: shoald log in $work/shoald.log (removed on exit)"
