#!/usr/bin/env bash
# Convergence benchmark (issue 4): from `service create --replicas N` to N tasks running, and
# from `service rm` to every task container gone, for N = 10, 100, 500, on a one-node cluster
# and on the 3 managers + 2 workers local cluster (deploy/cluster.sh); in the same run, Docker
# Swarm (Debian's docker.io, single-node `docker swarm init`, the same busybox rootfs through
# `docker import`, the same stop grace period). Prints times and ratios, then the resident
# memory of an idle manager and an idle worker.
#
# Both sides are timed the same way: `service create -d`, then `service ls` polled every 50 ms
# until REPLICAS reads N/N (the CLIs' own convergence waits add fixed verify windows).
#
# Usage: bench/swarm.sh [N…]   (as root; default 10 100 500; SKIP_DOCKER=1 to skip Docker)
#
# dockerd runs in a network namespace of its own (its bridges and iptables rules stay there)
# with its own data root, and is stopped afterwards.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
sizes=("${@:-10 100 500}")
read -r -a sizes <<<"${sizes[*]}"

[ -x /bin/busybox ] || { apt-get update -qq && apt-get install -y -qq busybox-static; }
cargo build --release --locked --bins
bin="$repo/target/release"
work=$(mktemp -d /tmp/shoal-bench.XXXXXX)
"$repo/deploy/build-demo-image.sh" "$work/demo.tar" >/dev/null

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
declare -A result

cleanup() {
  set +e
  "$repo/deploy/cluster.sh" down --name bench1 >/dev/null 2>&1
  "$repo/deploy/cluster.sh" down --name bench5 >/dev/null 2>&1
  docker_down
  rm -rf "$work"
}

# --- shoal ------------------------------------------------------------------------------
shoal_run() {
  local name=$1 label=$2
  shift 2
  local cl=("$repo/deploy/cluster.sh")
  local nodes
  nodes=$("${cl[@]}" ls --name "$name" | awk 'NR > 1 { print $1 }')
  "${cl[@]}" shoal --name "$name" manager1 image import "$work/demo.tar" demo:latest >/dev/null
  sleep 3
  echo "$label, idle before any service: $(rss_line "$name")"
  for n in "${sizes[@]}"; do
    local t0 t1 t2
    t0=$(now)
    "${cl[@]}" shoal --name "$name" manager1 service create -d -q --name "b$n" --replicas "$n" \
      --stop-grace-period 1s demo:latest sleep 100000 >/dev/null
    until [ "$("${cl[@]}" shoal --name "$name" manager1 service ls | awk -v s="b$n" '$2 == s { print $4 }')" = "$n/$n" ]; do
      sleep 0.05
    done
    t1=$(now)
    "${cl[@]}" shoal --name "$name" manager1 service rm "b$n" >/dev/null
    while :; do
      local left=0 node
      for node in $nodes; do
        left=$((left + $("${cl[@]}" shoal --name "$name" "$node" container ls -aq | wc -l)))
      done
      [ "$left" -eq 0 ] && break
      sleep 0.05
    done
    t2=$(now)
    result["$label,create,$n"]=$(elapsed "$t0" "$t1")
    result["$label,rm,$n"]=$(elapsed "$t1" "$t2")
    printf '%-14s N=%-4s create→running %7.2f s   rm→gone %7.2f s\n' "$label" "$n" \
      "${result["$label,create,$n"]}" "${result["$label,rm,$n"]}"
  done
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# RSS of manager1 (the leader), manager2 and worker1 when the cluster has them.
rss_line() {
  local ls_out line=""
  ls_out=$("$repo/deploy/cluster.sh" ls --name "$1")
  for node in manager1 manager2 worker1; do
    local pid
    pid=$(awk -v n="$node" '$1 == n { print $4 }' <<<"$ls_out")
    [ -n "$pid" ] && line+="$node $(rss_kb "$pid") kB  "
  done
  echo "RSS: $line"
}

# --- Docker Swarm -----------------------------------------------------------------------
docker_ns=shoal-bench-docker
docker_down() {
  if [ -n "${dockerd_pid:-}" ]; then
    docker_cli service ls -q 2>/dev/null | xargs -r "${docker[@]}" service rm >/dev/null 2>&1
    kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  fi
  ip netns del "$docker_ns" 2>/dev/null || true
  [ -n "${dockerd_root:-}" ] && { umount -R "$dockerd_root" 2>/dev/null; rm -rf "$dockerd_root"; }
  true
}
docker_cli() { docker -H "unix://$work/docker.sock" "$@"; }
docker_up() {
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io; }
  ip netns add "$docker_ns"
  ip -n "$docker_ns" link set lo up
  # Swarm needs an address to advertise; a veth pair inside the namespace gives one without
  # any route out.
  ip -n "$docker_ns" link add eth0 type veth peer name eth1
  ip -n "$docker_ns" link set eth1 up
  ip -n "$docker_ns" addr add 198.18.250.1/24 dev eth0
  ip -n "$docker_ns" link set eth0 up
  dockerd_root=$(mktemp -d /var/lib/shoal-bench-docker.XXXXXX)
  # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup mounts.
  nsenter --net="/run/netns/$docker_ns" dockerd --data-root "$dockerd_root/data" --exec-root "$dockerd_root/exec" \
    -H "unix://$work/docker.sock" --pidfile "$dockerd_root/docker.pid" \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 200); do docker_cli version >/dev/null 2>&1 && break; sleep 0.1; done
  docker_cli swarm init --advertise-addr 198.18.250.1 >/dev/null
  docker_cli import "$work/demo.tar" demo:latest >/dev/null
}
docker_run() {
  for n in "${sizes[@]}"; do
    local t0 t1 t2
    t0=$(now)
    docker_cli service create -d -q --name "b$n" --replicas "$n" --stop-grace-period 1s \
      demo:latest sleep 100000 >/dev/null
    until [ "$(docker_cli service ls | awk -v s="b$n" '$2 == s { print $4 }')" = "$n/$n" ]; do
      sleep 0.05
    done
    t1=$(now)
    docker_cli service rm "b$n" >/dev/null
    while [ "$(docker_cli ps -aq | wc -l)" -gt 0 ]; do sleep 0.05; done
    t2=$(now)
    result["docker,create,$n"]=$(elapsed "$t0" "$t1")
    result["docker,rm,$n"]=$(elapsed "$t1" "$t2")
    printf '%-14s N=%-4s create→running %7.2f s   rm→gone %7.2f s\n' "docker swarm" "$n" \
      "${result["docker,create,$n"]}" "${result["docker,rm,$n"]}"
  done
}

trap cleanup EXIT
echo "== shoal, one node"
"$repo/deploy/cluster.sh" up --name bench1 --managers 1 --workers 0 --subnet 198.18.251 \
  --bin "$bin" >/dev/null
shoal_run bench1 "shoal 1 node"
sleep 3
echo "shoal 1 node, idle after the runs: $(rss_line bench1)"
"$repo/deploy/cluster.sh" down --name bench1 >/dev/null

echo "== shoal, 3 managers + 2 workers"
"$repo/deploy/cluster.sh" up --name bench5 --managers 3 --workers 2 --subnet 198.18.252 \
  --bin "$bin" >/dev/null
shoal_run bench5 "shoal 3+2"
sleep 3
echo "shoal 3+2, idle after the runs: $(rss_line bench5)"
"$repo/deploy/cluster.sh" down --name bench5 >/dev/null

if [ -z "${SKIP_DOCKER:-}" ]; then
  echo "== Docker Swarm, one node"
  docker_up
  docker_run
  echo "idle dockerd RSS: $(rss_kb "$dockerd_pid") kB; containerd: $(pgrep -f "containerd.*$dockerd_root" | head -1 | xargs -r -I{} awk '/^VmRSS:/ { print $2 }' /proc/{}/status) kB"
  echo "== ratios (Docker time / shoal time; higher is better for shoal)"
  for n in "${sizes[@]}"; do
    for label in "shoal 1 node" "shoal 3+2"; do
      printf '%-14s N=%-4s create %6.1fx   rm %6.1fx\n' "$label" "$n" \
        "$(echo "${result["docker,create,$n"]} / ${result["$label,create,$n"]}" | bc -l)" \
        "$(echo "${result["docker,rm,$n"]} / ${result["$label,rm,$n"]}" | bc -l)"
    done
  done
fi
