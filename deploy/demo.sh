#!/usr/bin/env bash
# shoal's main job on one machine, end to end: build shoal, start a local cluster of 3
# managers and 2 workers (each node a shoald in its own network and UTS namespace, see
# deploy/cluster.sh), build the demo image from Debian's busybox-static and load it on a
# manager, run a demo service of 3 replicas on an overlay network with port 8080 published,
# show `node ls`, `service ls` and `service ps`, scale it to 5, fetch a page from one of its
# tasks, then fetch the published port on every node through the routing mesh. Everything it
# starts it stops again.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if ! [ -x /bin/busybox ] || ! command -v nsenter >/dev/null || ! command -v ip >/dev/null ||
  ! command -v nft >/dev/null || ! command -v curl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq busybox-static iproute2 util-linux nftables curl
fi
cargo build --release --locked --bins

name=shoal-demo
cluster() { "$repo/deploy/cluster.sh" "$1" --name "$name" "${@:2}"; }
cleanup() { cluster down >/dev/null 2>&1 || true; rm -rf "$work"; }
work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
trap cleanup EXIT

step() {
  local node=$1
  shift
  printf '\n\033[1m%s$ shoal %s\033[0m\n' "$node" "$*"
  cluster shoal "$node" "$@"
}

cluster up --managers 3 --workers 2 --subnet 198.18.0 --bin "$repo/target/release"
"$repo/deploy/build-demo-image.sh" "$work/demo.tar" >/dev/null
step manager1 image import "$work/demo.tar" shoal/demo:latest
step manager1 node ls
step manager1 network create -d overlay demo-net
step manager1 service create --name web --replicas 3 --stop-grace-period 1s \
  --network demo-net -p 8080:80 \
  shoal/demo sh -c 'hostname > /var/www/index.html; exec httpd -f -p 80 -h /var/www'
step manager1 service ls
step manager1 service ps web
step manager2 service scale web=5
step manager1 service ls
step manager1 service ps web
# A task's container, on whichever node runs it: operators debug this way.
for node in worker1 worker2 manager1 manager2 manager3; do
  task=$(cluster shoal "$node" container ls -q | head -1)
  if [ -n "$task" ]; then
    step "$node" container exec "$task" wget -qO- http://127.0.0.1:80/
    break
  fi
done
# The routing mesh: port 8080 answers on every node, and each reply names the task behind it.
for node in manager1 manager2 manager3 worker1 worker2; do
  addr=$(cluster ls | awk -v n="$node" '$1 == n {print $3}')
  printf '\n\033[1mworker1$ curl http://%s:8080/  (%s)\033[0m\n' "$addr" "$node"
  cluster exec worker1 curl -s --max-time 3 "http://$addr:8080/"
done
step manager1 service rm web
step manager1 network rm demo-net
echo
echo "demo finished; the cluster is taken down"
