#!/usr/bin/env bash
# Network benchmark (issue 5), in one run on a local cluster of 1 manager and 2 workers
# (deploy/cluster.sh, cluster `nb` on 198.18.90.0/24):
#
#  1. HTTP requests/s (wrk) to a busybox httpd service (one task, on worker2, port 8080
#     published in ingress mode), from a client namespace that is not a shoal node:
#       a. the ingress port of manager1, which has no task (DNAT, ingress overlay, masquerade);
#       b. the ingress port of worker2, which has the task (DNAT to the local task);
#       c. the task's own gateway-bridge address (172.18.x.y), routed through worker2 with no
#          NAT: the hops of b without the DNAT.
#     Ratios a/c and b/c; target ≥ 0.9.
#  2. TCP throughput (iperf3) between a task on worker1 and a task on worker2 over an overlay
#     network, and between worker1's and worker2's own addresses. Ratio overlay/underlay;
#     target ≥ 0.8.
#
# Each measurement runs ROUNDS times, the variants interleaved, and the median is reported.
#
# Usage: bench/network.sh   (as root; env: ROUNDS=3 DURATION=10 WRK_THREADS=2 WRK_CONNS=32)
#
# Installs wrk, iperf3, busybox-static and curl with apt-get when missing. The client lives
# in namespace nb-client, its veth's other end on the cluster's lab bridge: nothing is added
# to the host's network namespace but the namespaces themselves. Everything the script makes
# (cluster, client namespace, work dir) is removed at exit, also on failure or Ctrl-C.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

rounds=${ROUNDS:-3}
duration=${DURATION:-10}
wrk_threads=${WRK_THREADS:-2}
wrk_conns=${WRK_CONNS:-32}
name=nb
subnet=198.18.90
client_ns=nb-client
# Outside the range cluster.sh gives nodes (.11 upwards), checked below.
client_addr=$subnet.250
gw_subnet=172.18.0.0/16
http_port=8080

die() {
  echo "network.sh: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, the cluster)"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
[ -x /bin/busybox ] || need+=(busybox-static)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
cargo build --release --locked --bins
bin="$repo/target/release"
work=$(mktemp -d /tmp/shoal-bench-net.XXXXXX)

cl() { "$repo/deploy/cluster.sh" "$1" --name "$name" "${@:2}"; }
shoal_on() { cl shoal "$@"; }
in_client() { nsenter --net="/run/netns/$client_ns" -- "$@"; }

underlay_pid=
cleanup() {
  set +e
  [ -n "$underlay_pid" ] && kill "$underlay_pid" 2>/dev/null
  # Only this script's processes (wrk, curl) can be in the client namespace.
  for pid in $(ip netns pids "$client_ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  ip netns del "$client_ns" 2>/dev/null
  cl down >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- images -----------------------------------------------------------------------------
# busybox-static plus iperf3 with the shared libraries it links, at their own paths.
build_iperf_image() {
  local out=$1 root=$work/iperf-root applet lib iperf
  mkdir -p "$root"/{bin,dev,etc,proc,root,sys,tmp,usr/bin}
  chmod 1777 "$root/tmp"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    case $applet in busybox | */*) continue ;; esac
    ln -s busybox "$root/bin/$applet"
  done
  iperf=$(command -v iperf3)
  install -D -m 0755 "$iperf" "$root$iperf"
  # `ldd` lines: "libx.so => /path (0x…)" or, for the loader, "/lib64/ld-….so.2 (0x…)".
  for lib in $(ldd "$iperf" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$out" .
}

# --- helpers ----------------------------------------------------------------------------
# Waits until `service ls` on manager1 shows SERVICE at N/N.
wait_service() {
  local svc=$1 want=$2 deadline=$((SECONDS + 120))
  until [ "$(shoal_on manager1 service ls | awk -v s="$svc" '$2 == s { print $4 }')" = "$want/$want" ]; do
    ((SECONDS < deadline)) || {
      shoal_on manager1 service ps "$svc" >&2
      die "service $svc is not at $want/$want after 120 s"
    }
    sleep 0.2
  done
}

# The id of the running container of SERVICE's task on NODE (names are SERVICE.SLOT.TASK).
task_container() {
  local node=$1 svc=$2 id deadline=$((SECONDS + 30))
  while :; do
    id=$(shoal_on "$node" container ls --no-trunc | awk -v p="$svc." 'NR > 1 && index($NF, p) == 1 { print $1; exit }')
    [ -n "$id" ] && break
    ((SECONDS < deadline)) || die "no container of service $svc on $node"
    sleep 0.2
  done
  echo "$id"
}

# The IPv4 addresses of container ID on NODE, one per line.
container_addrs() {
  shoal_on "$1" container exec "$2" ip -4 addr | awk '$1 == "inet" { sub(/\/.*/, "", $2); print $2 }'
}

node_field() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' <<<"$nodes"; }

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { echo "scale=3; $1 / $2" | bc -l | sed 's/^\./0./'; }
verdict() {
  if [ "$(echo "$1 >= $2" | bc -l)" = 1 ]; then echo "ok"; else echo "BELOW TARGET"; fi
}

# Waits until URL answers 200 from the client namespace.
wait_http() {
  local url=$1 deadline=$((SECONDS + 30))
  until [ "$(in_client curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)" = 200 ]; do
    ((SECONDS < deadline)) || die "$url does not answer 200 from $client_ns after 30 s"
    sleep 0.5
  done
}

# Requests/s of one wrk run against URL from the client namespace; wrk's error lines go to
# stderr so that a run with errors does not pass unnoticed.
wrk_rps() {
  local out rps
  out=$(in_client wrk -t"$wrk_threads" -c"$wrk_conns" -d"${duration}s" "$1")
  grep -E 'Socket errors|Non-2xx' <<<"$out" | sed "s|^|  wrk $1: |" >&2 || true
  rps=$(awk '$1 == "Requests/sec:" { print $2 }' <<<"$out")
  [ -n "$rps" ] || die "wrk against $1 printed no Requests/sec: $out"
  echo "$rps"
}

# Gbit/s received in one iperf3 run whose JSON report (-J) is on stdin.
iperf_gbps() {
  local json err
  json=$(cat)
  err=$(jq -r '.error // empty' <<<"$json" 2>/dev/null || echo "unparsable report")
  [ -z "$err" ] || die "iperf3 failed: $err"
  jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$json"
}

# --- cluster and client -----------------------------------------------------------------
ip netns del "$client_ns" 2>/dev/null || true
echo "== cluster $name: 1 manager, 2 workers on $subnet.0/24"
cl up --managers 1 --workers 2 --subnet "$subnet" --bin "$bin" >/dev/null
nodes=$(cl ls)
for n in manager1 worker1 worker2; do
  [ -n "$(node_field "$n" 3)" ] || die "cluster.sh ls lists no $n: $nodes"
done
m1_addr=$(node_field manager1 3)
w1_ns=$(node_field worker1 2)
w2_ns=$(node_field worker2 2)
w2_addr=$(node_field worker2 3)
! awk 'NR > 1 { print $3 }' <<<"$nodes" | grep -qx "$client_addr" ||
  die "$client_addr is a node's address; pick another client address"

ip netns add "$client_ns"
ip -n "$name-lab" link add nbclient type veth peer name eth0 netns "$client_ns"
ip -n "$name-lab" link set nbclient master br0 up
ip -n "$client_ns" link set lo up
ip -n "$client_ns" addr add "$client_addr/24" dev eth0
ip -n "$client_ns" link set eth0 up
# Task gateway addresses, routed by worker2 (shoald turns on its forwarding).
ip -n "$client_ns" route add "$gw_subnet" via "$w2_addr"

out=$("$repo/deploy/build-demo-image.sh" "$work/demo.tar" 2>&1) || die "build-demo-image.sh: $out"
build_iperf_image "$work/iperf.tar"
shoal_on manager1 image import "$work/demo.tar" shoal/demo:latest >/dev/null
shoal_on manager1 image import "$work/iperf.tar" bench-iperf:latest >/dev/null
shoal_on manager1 network create -d overlay bench-net >/dev/null

# --- 1. HTTP ----------------------------------------------------------------------------
echo "== HTTP: wrk -t$wrk_threads -c$wrk_conns -d${duration}s, $rounds rounds"
shoal_on manager1 service create -d -q --name web --replicas 1 \
  --constraint node.hostname==worker2 --network bench-net -p "$http_port:80" \
  shoal/demo:latest httpd -f -p 80 -h /var/www >/dev/null
wait_service web 1
web=$(task_container worker2 web)
web_gw=$(container_addrs worker2 "$web" | grep -F 172.18. | head -1)
[ -n "$web_gw" ] || die "web's task has no address in $gw_subnet: $(container_addrs worker2 "$web" | tr '\n' ' ')"

declare -A url label
url[a]=http://$m1_addr:$http_port/
url[b]=http://$w2_addr:$http_port/
url[c]=http://$web_gw:80/
label[a]="ingress, node without task"
label[b]="ingress, node with task"
label[c]="direct to task"
declare -A rps_runs
for p in a b c; do
  wait_http "${url[$p]}"
  rps_runs[$p]=
done
for ((r = 1; r <= rounds; r++)); do
  for p in a b c; do
    v=$(wrk_rps "${url[$p]}")
    rps_runs[$p]+=" $v"
    printf '  round %d  %s %-28s %-32s %10.0f req/s\n' "$r" "$p" "${label[$p]}" "${url[$p]}" "$v"
  done
done
declare -A rps
for p in a b c; do
  # shellcheck disable=SC2086 # the runs are a space-separated list
  rps[$p]=$(median ${rps_runs[$p]})
done
ratio_a=$(ratio "${rps[a]}" "${rps[c]}")
ratio_b=$(ratio "${rps[b]}" "${rps[c]}")
shoal_on manager1 service rm web >/dev/null

# --- 2. TCP throughput ------------------------------------------------------------------
echo "== TCP: iperf3 -t $duration, $rounds rounds"
# Two services, one per worker: shoal has no --replicas-max-per-node.
for w in 1 2; do
  shoal_on manager1 service create -d -q --name "perf$w" --replicas 1 \
    --constraint "node.hostname==worker$w" --network bench-net \
    bench-iperf:latest iperf3 -s >/dev/null
done
wait_service perf1 1
wait_service perf2 1
perf1=$(task_container worker1 perf1)
perf2=$(task_container worker2 perf2)
perf2_addr=$(container_addrs worker2 "$perf2" | grep -vE '^(127|172\.18)\.' | head -1)
[ -n "$perf2_addr" ] || die "perf2's task has no overlay address"
overlay_mtu=$(shoal_on worker1 container exec "$perf1" cat /sys/class/net/eth0/mtu)

nsenter --net="/run/netns/$w2_ns" -- iperf3 -s >/dev/null 2>&1 &
underlay_pid=$!
# The servers are up when a one-second run gets through.
deadline=$((SECONDS + 30))
until shoal_on worker1 container exec "$perf1" iperf3 -c "$perf2_addr" -t 1 >/dev/null 2>&1 &&
  nsenter --net="/run/netns/$w1_ns" -- iperf3 -c "$w2_addr" -t 1 >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "iperf3 servers do not answer after 30 s"
  sleep 0.5
done

overlay_runs=() underlay_runs=()
for ((r = 1; r <= rounds; r++)); do
  v=$(shoal_on worker1 container exec "$perf1" iperf3 -c "$perf2_addr" -t "$duration" -J | iperf_gbps)
  overlay_runs+=("$v")
  printf '  round %d  overlay   task %-15s %8.2f Gbit/s\n' "$r" "$perf2_addr" "$v"
  v=$(nsenter --net="/run/netns/$w1_ns" -- iperf3 -c "$w2_addr" -t "$duration" -J | iperf_gbps)
  underlay_runs+=("$v")
  printf '  round %d  underlay  node %-15s %8.2f Gbit/s\n' "$r" "$w2_addr" "$v"
done
overlay=$(median "${overlay_runs[@]}")
underlay=$(median "${underlay_runs[@]}")
ratio_o=$(ratio "$overlay" "$underlay")

# --- summary ----------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "== summary (medians of $rounds rounds)"
echo "kernel $(uname -r), $(nproc) CPUs${cpu:+ ($cpu)}"
row() { printf '%-6s%-34s%10s %-7s%s\n' "$@"; }
row HTTP "a. ingress, node without task" "$(printf %.0f "${rps[a]}")" req/s \
  "a/c $ratio_a (target >= 0.9: $(verdict "$ratio_a" 0.9))"
row HTTP "b. ingress, node with task" "$(printf %.0f "${rps[b]}")" req/s \
  "b/c $ratio_b (target >= 0.9: $(verdict "$ratio_b" 0.9))"
row HTTP "c. direct to task" "$(printf %.0f "${rps[c]}")" req/s ""
row TCP "overlay, task to task (MTU $overlay_mtu)" "$(printf %.2f "$overlay")" Gbit/s \
  "overlay/underlay $ratio_o (target >= 0.8: $(verdict "$ratio_o" 0.8))"
row TCP "underlay, node to node" "$(printf %.2f "$underlay")" Gbit/s ""
