#!/usr/bin/env bash
# A multi-node shoal cluster on one machine: each node is a `shoald` in its own network and
# UTS namespace, the nodes joined by a bridge in a lab namespace that has no route off the
# machine. Used by operators (deploy/README.md) and by the integration tests
# (tests/src/cluster.rs drives this script, so there is one implementation).
#
#   cluster.sh up [--name NAME] [--managers N] [--workers M] [--subnet 198.18.X] [--bin DIR]
#                 [--no-swarm]
#   cluster.sh down [--name NAME]
#   cluster.sh ls [--name NAME]
#   cluster.sh shoal [--name NAME] NODE ARGS...    shoal -H <NODE's socket> ARGS...
#   cluster.sh exec [--name NAME] NODE CMD...      CMD in NODE's network and UTS namespaces
#   cluster.sh kill|stop|start [--name NAME] NODE  SIGKILL / SIGTERM / restart NODE's shoald
#
# Layout, for cluster NAME (default shoal, or $SHOAL_CLUSTER_NAME) on subnet 198.18.X:
#   netns NAME-lab   bridge br0 and one veth end per node; no address, no route, no link to
#                    the host namespace, so nothing sent in the cluster can leave the machine
#   netns NAME-nI    node I (managers first): lo, eth0 = 198.18.X.(10+I)/24
#   STATE            /run/shoal-cluster/NAME, or $SHOAL_CLUSTER_STATE; per node HOST
#                    (manager1.., worker1..): data/ (data root), shoal.sock, shoald.log, pid,
#                    uts (the node's UTS namespace, bind-mounted so that it outlives shoald)
#
# Nodes enter their network namespace with `nsenter --net`, not `ip netns exec`: the latter
# also gives the process a new mount namespace and remounts /sys, which hides the cgroup
# mounts under /sys/fs/cgroup and keeps container rootfs mounts out of the host's view
# (a restarted shoald would not see its containers' mounts, and `down` could not unmount
# them).
set -euo pipefail

readonly CLUSTER_PORT=4247
# Seconds a starting shoald has to answer `shoal version`: it opens its data root and binds
# a socket, well under a second normally; only a broken build or a stuck lock takes longer.
readonly START_TIMEOUT=20
# Seconds between SIGTERM and SIGKILL when stopping a shoald.
readonly STOP_GRACE=5
# Seconds the cluster has, after the last join, to list every node.
readonly JOIN_TIMEOUT=30
# Seconds one `shoal` command of `up` may take before it counts as hung.
readonly COMMAND_TIMEOUT=60

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAME=${SHOAL_CLUSTER_NAME:-shoal}
STATE=

usage() {
  # The header comment, up to the design note.
  awk 'NR > 1 && /^# Nodes enter/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
}

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "$1 needs root (network namespaces, mounts, cgroups)"
}

# Sets NAME and STATE, checking NAME is usable in netns and interface names.
set_name() {
  NAME=$1
  [[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$ ]] ||
    die "bad cluster name '$NAME': letters, digits, '_' and '-', at most 32"
  STATE=${SHOAL_CLUSTER_STATE:-/run/shoal-cluster/$NAME}
  [[ $STATE == /* && $STATE != / && $STATE != *[[:space:]]* ]] ||
    die "bad state dir '$STATE': an absolute path without spaces, not /"
  STATE=${STATE%/}
}

lab_ns() { echo "$NAME-lab"; }
node_ns() { echo "$NAME-n$1"; }

# The cluster's namespaces that exist, also for a half-created or half-removed cluster.
cluster_netns() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NAME}-(lab|n[0-9]+)$" || true
}

conf() { sed -n "s/^$1=//p" "$STATE/cluster.env" 2>/dev/null; }

# "INDEX HOST ADDR" per node, from the state dir.
nodes() { [ -f "$STATE/nodes" ] && cat "$STATE/nodes"; }

require_cluster() {
  [ -f "$STATE/cluster.env" ] || die "no cluster '$NAME' ($STATE/cluster.env missing); run: $0 up --name $NAME"
}

# Prints "INDEX ADDR" for HOST, or dies.
node_info() {
  local idx host addr
  while read -r idx host addr; do
    if [ "$host" = "$1" ]; then
      echo "$idx $addr"
      return
    fi
  done < <(nodes)
  die "cluster '$NAME' has no node '$1' (nodes: $(nodes | awk '{printf "%s ", $2}'))"
}

# Prints PID's command line, arguments joined by spaces, with a trailing space; fails when
# the process is gone. Builtins only: `down` calls it for every process on the machine.
cmdline_of() {
  local args IFS=' '
  { mapfile -d '' args <"/proc/$1/cmdline"; } 2>/dev/null || return 1
  ((${#args[@]})) || return 1
  printf '%s \n' "${args[*]}"
}

# True when PID is the shoald serving HOST's data root (pids get reused; never signal a
# stranger).
is_node_daemon() {
  local pid=$1 host=$2 cmdline
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(cmdline_of "$pid") || return 1
  [[ $cmdline == *shoald" --data-root $STATE/$host/data "* ]]
}

# The live shoald pid of HOST, or nothing.
daemon_pid() {
  local pid
  pid=$(cat "$STATE/$1/pid" 2>/dev/null) || return 0
  if is_node_daemon "$pid" "$1"; then echo "$pid"; fi
}

# Starts HOST's shoald in the background, in the node's namespaces. nsenter and setsid exec
# (setsid does not fork: a background job is not a process-group leader), so `$!` is
# shoald's pid. setsid keeps a Ctrl-C at the terminal from reaching the daemons.
start_daemon() {
  local host=$1 idx=$2 bin dir
  bin=$(conf bin)
  dir=$STATE/$host
  RUST_LOG=${RUST_LOG:-info} setsid nsenter --net="/run/netns/$(node_ns "$idx")" --uts="$dir/uts" -- \
    "$bin/shoald" --data-root "$dir/data" -H "unix://$dir/shoal.sock" \
    </dev/null >>"$dir/shoald.log" 2>&1 &
  echo "$!" >"$dir/pid"
}

# Waits until HOST's shoald answers; on failure prints its log's tail and dies.
wait_daemon() {
  local host=$1 pid deadline bin
  bin=$(conf bin)
  pid=$(cat "$STATE/$host/pid")
  deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! running "$pid"; then
      tail -n 30 "$STATE/$host/shoald.log" >&2 || true
      die "$host: shoald (pid $pid) exited at start; log above ($STATE/$host/shoald.log)"
    fi
    if timeout 5 "$bin/shoal" -H "unix://$STATE/$host/shoal.sock" version >/dev/null 2>&1; then
      break
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$STATE/$host/shoald.log" >&2 || true
      die "$host: shoald (pid $pid) did not answer within ${START_TIMEOUT}s; log above"
    fi
    sleep 0.1
  done
  is_node_daemon "$pid" "$host" || die "$host: pid $pid is not shoald (pid file points elsewhere)"
}

# Runs shoal on HOST and prints its stdout (its stderr passes through: a warning must not
# end up in a captured token), dying when it fails or hangs.
node_shoal() {
  local host=$1 out
  shift
  if ! out=$(timeout "$COMMAND_TIMEOUT" "$(conf bin)/shoal" -H "unix://$STATE/$host/shoal.sock" "$@"); then
    printf '%s\n' "$out" >&2
    die "$host: shoal $* failed"
  fi
  printf '%s\n' "$out"
}

cmd_up() {
  local managers=3 workers=2 subnet=198.18.0 bin='' swarm=1
  while (($#)); do
    case $1 in
    --name) set_name "${2:?--name needs a value}" && shift 2 ;;
    --managers) managers=${2:?--managers needs a value} && shift 2 ;;
    --workers) workers=${2:?--workers needs a value} && shift 2 ;;
    --subnet) subnet=${2:?--subnet needs a value} && shift 2 ;;
    --bin) bin=${2:?--bin needs a value} && shift 2 ;;
    --no-swarm) swarm=0 && shift ;;
    *) die "up: unknown argument '$1' (see $0 help)" ;;
    esac
  done
  require_root up
  [[ $managers =~ ^[0-9]+$ && $workers =~ ^[0-9]+$ ]] || die "--managers and --workers take numbers"
  managers=$((10#$managers)) workers=$((10#$workers))
  ((managers >= 1)) || die "a cluster needs at least one manager"
  ((managers + workers <= 200)) || die "at most 200 nodes (addresses .11 to .210)"
  if ! [[ $subnet =~ ^198\.1[89]\.(0|[1-9][0-9]{0,2})$ ]] || ((BASH_REMATCH[1] > 255)); then
    die "bad subnet '$subnet': 198.18.X or 198.19.X (198.18.0.0/15, reserved for tests)"
  fi
  if [ -z "$bin" ]; then
    local rel=$repo/target/release debug=$repo/target/debug
    if [ -x "$rel/shoald" ] && { [ ! -x "$debug/shoald" ] || [ "$rel/shoald" -nt "$debug/shoald" ]; }; then
      bin=$rel
    elif [ -x "$debug/shoald" ]; then
      bin=$debug
    else
      die "no shoald in $rel or $debug: run 'cargo build --bins' or pass --bin DIR"
    fi
  fi
  bin=$(cd "$bin" && pwd) || die "--bin $bin: no such directory"
  local b
  for b in shoald shoal shoal-shim; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: run 'cargo build --bins' or pass --bin DIR"
  done
  # The longest node name is at most managerN with N the node count.
  local sock="$STATE/manager$((managers + workers))/shoal.sock"
  ((${#sock} <= 100)) || die "state dir $STATE is too long for a unix socket path"

  if [ -e "$STATE" ] || [ -n "$(cluster_netns)" ]; then
    log "cluster '$NAME' exists; taking it down first"
    cmd_down
  fi
  trap 'rc=$?; ((rc == 0)) || log "up failed; logs are in $STATE, clean up with: $0 down --name $NAME"' EXIT

  # The marker first: `down` removes only a state dir that has it.
  mkdir -p "$STATE"
  printf 'name=%s\nsubnet=%s\nbin=%s\n' "$NAME" "$subnet" "$bin" >"$STATE/cluster.env"
  local total=$((managers + workers)) i host
  : >"$STATE/nodes"
  for ((i = 1; i <= total; i++)); do
    if ((i <= managers)); then host=manager$i; else host=worker$((i - managers)); fi
    echo "$i $host $subnet.$((10 + i))" >>"$STATE/nodes"
  done

  local lab
  lab=$(lab_ns)
  ip netns add "$lab"
  # The lab is a switch and nothing more: no IPv6 either, so not even link-local addresses
  # or routes appear on its ports (the bridge still carries the nodes' IPv6 frames).
  nsenter --net="/run/netns/$lab" sh -c 'if [ -d /proc/sys/net/ipv6 ]; then
    echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
    echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
  fi'
  ip -n "$lab" link add br0 type bridge
  ip -n "$lab" link set br0 up
  local idx addr ns
  while read -r idx host addr; do
    ns=$(node_ns "$idx")
    ip netns add "$ns"
    ip -n "$lab" link add "n$idx" type veth peer name eth0 netns "$ns"
    ip -n "$lab" link set "n$idx" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "$STATE/$host/data"
    touch "$STATE/$host/uts"
    unshare --uts="$STATE/$host/uts" hostname "$host"
    start_daemon "$host" "$idx"
  done < <(nodes)
  while read -r idx host addr; do
    wait_daemon "$host"
  done < <(nodes)
  log "$total daemons answer"

  if ((swarm)); then form_swarm "$managers" "$workers"; fi
  cmd_ls
}

# Makes manager1 the first manager and joins every other node through it.
form_swarm() {
  local managers=$1 workers=$2 first subnet idx host addr token_m token_w
  subnet=$(conf subnet)
  first=manager1
  node_shoal "$first" swarm init --advertise-addr "$subnet.11" >/dev/null
  token_w=$(node_shoal "$first" swarm join-token -q worker)
  token_m=$(node_shoal "$first" swarm join-token -q manager)
  # One at a time: each manager join is a Raft membership change, and the leader takes those
  # one by one anyway.
  while read -r idx host addr; do
    ((idx == 1)) && continue
    local token=$token_w
    if ((idx <= managers)); then token=$token_m; fi
    node_shoal "$host" swarm join --token "$token" --advertise-addr "$addr" \
      "$subnet.11:$CLUSTER_PORT" >/dev/null
  done < <(nodes)
  local want=$((managers + workers)) have=0 deadline=$((SECONDS + JOIN_TIMEOUT))
  while :; do
    have=$(node_shoal "$first" node ls -q | grep -c . || true)
    ((have >= want)) && break
    ((SECONDS < deadline)) || die "$first lists $have of $want nodes ${JOIN_TIMEOUT}s after the joins"
    sleep 0.2
  done
  log "swarm formed: $managers managers, $workers workers"
}

# Writes VALUE to the control file FILE if it exists, ignoring failure (the cgroup may be
# going away under us).
write_ctl() {
  if [ -f "$2" ]; then { echo "$1" >"$2"; } 2>/dev/null || true; fi
}

# SIGKILLs every process in the cgroups of container ID (every hierarchy, v1 or v2), after
# thawing them: a frozen (paused) process does not die of SIGKILL until thawed.
kill_container_cgroup() {
  local id=$1
  write_ctl THAWED "/sys/fs/cgroup/freezer/shoal/$id/freezer.state"
  write_ctl 0 "/sys/fs/cgroup/shoal/$id/cgroup.freeze"
  write_ctl 1 "/sys/fs/cgroup/shoal/$id/cgroup.kill"
  local procs pid
  for procs in /sys/fs/cgroup/*/shoal/"$id"/cgroup.procs /sys/fs/cgroup/shoal/"$id"/cgroup.procs; do
    [ -f "$procs" ] || continue
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$procs"
  done
}

# True while PID runs. Not `kill -0`: a zombie passes that, and a killed shoald stays one
# when the machine's init does not reap orphans (some container inits do not).
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ ${stat##*) } != Z* ]]
}

# Start time of PID in clock ticks (field 22 of /proc/PID/stat), as state.json records it.
proc_start() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # The command name may hold spaces and parentheses: count from the last ')'.
  rest=${stat##*) }
  read -ra f <<<"$rest"
  echo "${f[19]:-}"
}

# SIGKILLs the container process and the supervisor a container's state.json names
# (runtime/src/container/state.rs, `StateFile`), when they still are those processes.
kill_state_pids() {
  local json who pid start
  json=$(cat "$1/state.json" 2>/dev/null) || return 0
  for who in pid:pid_start shim_pid:shim_start; do
    [[ $json =~ \"${who%:*}\":([0-9]+) ]] || continue
    pid=${BASH_REMATCH[1]}
    [[ $json =~ \"${who#*:}\":([0-9]+) ]] || continue
    start=${BASH_REMATCH[1]}
    if ((pid > 1)) && [ "$(proc_start "$pid")" = "$start" ]; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

# Removes cgroup directory CG and its children, giving killed processes a moment to leave.
remove_cgroup() {
  local _
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$1" ] || return 0
    sleep 0.2
  done
  return 1
}

# Pids of processes (other than this script) whose command line mentions the state dir.
pids_mentioning_state() {
  local p cmdline
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    if [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || [ "$p" = 1 ]; then continue; fi
    cmdline=$(cmdline_of "$p") || continue
    if [[ $cmdline == *"$STATE/"* ]]; then echo "$p"; fi
  done
}

# Mount points at or under the state dir, deepest first.
mounts_under_state() {
  findmnt -rn -o TARGET | awk -v s="$STATE" '$0 == s || index($0, s "/") == 1' | sort -r -u
}

cmd_down() {
  while (($#)); do
    case $1 in
    --name) set_name "${2:?--name needs a value}" && shift 2 ;;
    *) die "down: unknown argument '$1'" ;;
    esac
  done
  require_root down
  local hostdir host pid pids=()

  # 1. The daemons, gracefully first: they flush their state.
  for hostdir in "$STATE"/*/; do
    [ -f "$hostdir/pid" ] || continue
    host=$(basename "$hostdir")
    pid=$(daemon_pid "$host")
    if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  local deadline=$((SECONDS + STOP_GRACE))
  for pid in ${pids[@]+"${pids[@]}"}; do
    while running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done

  # 2. What the daemons left running: containers (by cgroup and state.json), supervisors and
  #    anything else in the nodes' namespaces or naming the state dir.
  local cdir id
  for cdir in "$STATE"/*/data/containers/*/; do
    [ -d "$cdir" ] || continue
    id=$(basename "$cdir")
    [[ $id =~ ^[A-Za-z0-9_.-]+$ && $id != . && $id != .. ]] || continue
    kill_container_cgroup "$id"
    kill_state_pids "$cdir"
  done
  local ns
  for ns in $(cluster_netns); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for pid in $(pids_mentioning_state); do kill -9 "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + STOP_GRACE))
  while [ -n "$(pids_mentioning_state)" ] && ((SECONDS < deadline)); do sleep 0.1; done

  # 3. The containers' cgroups (the shared parent `shoal` stays, as the runtime leaves it).
  for cdir in "$STATE"/*/data/containers/*/; do
    [ -d "$cdir" ] || continue
    id=$(basename "$cdir")
    [[ $id =~ ^[A-Za-z0-9_.-]+$ && $id != . && $id != .. ]] || continue
    local cg
    for cg in /sys/fs/cgroup/*/shoal/"$id" /sys/fs/cgroup/shoal/"$id"; do
      [ -d "$cg" ] || continue
      kill_container_cgroup "$id"
      remove_cgroup "$cg" || log "cannot remove cgroup $cg"
    done
  done

  # 4. Mounts (container rootfs overlays, the UTS namespace files), deepest first; a lazy
  #    unmount when something still holds one.
  # Stacked mounts need one round per layer.
  local round m left
  for round in 1 2 3 4 5; do
    left=$(mounts_under_state)
    [ -n "$left" ] || break
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$left"
  done
  left=$(mounts_under_state)
  [ -z "$left" ] || die "still mounted under $STATE after $round rounds: $left"

  # 5. The namespaces, then the state dir (only one this script made: it has the marker).
  for ns in $(cluster_netns); do ip netns del "$ns" 2>/dev/null || log "cannot delete netns $ns"; done
  if [ -e "$STATE" ]; then
    if [ -f "$STATE/cluster.env" ]; then
      [ -z "$(mounts_under_state)" ] || die "refusing to delete $STATE: mounts remain"
      rm -rf --one-file-system "$STATE"
    else
      log "left $STATE in place: it has no cluster.env, so cluster.sh did not make it"
    fi
  fi
  [ -z "$(cluster_netns)" ] || die "namespaces remain: $(cluster_netns | tr '\n' ' ')"
  log "cluster '$NAME' is down"
}

cmd_ls() {
  while (($#)); do
    case $1 in
    --name) set_name "${2:?--name needs a value}" && shift 2 ;;
    *) die "ls: unknown argument '$1'" ;;
    esac
  done
  require_cluster
  local idx host addr pid alive
  printf '%-12s %-20s %-15s %-8s %s\n' NODE NETNS ADDRESS PID ALIVE
  while read -r idx host addr; do
    pid=$(cat "$STATE/$host/pid" 2>/dev/null || echo -)
    alive=no
    [ -n "$(daemon_pid "$host")" ] && alive=yes
    printf '%-12s %-20s %-15s %-8s %s\n' "$host" "$(node_ns "$idx")" "$addr" "$pid" "$alive"
  done < <(nodes)
}

# `--name NAME` (optional) then NODE: shared by the per-node commands. Sets NODE, NODE_IDX
# and NODE_ARGS_USED (the number of arguments consumed).
parse_node() {
  NODE_ARGS_USED=0
  if [ "${1:-}" = --name ]; then
    set_name "${2:?--name needs a value}"
    shift 2
    NODE_ARGS_USED=2
  fi
  [ -n "${1:-}" ] || die "which node? (see: $0 ls --name $NAME)"
  NODE=$1
  NODE_ARGS_USED=$((NODE_ARGS_USED + 1))
  require_cluster
  local info
  info=$(node_info "$NODE")
  NODE_IDX=${info%% *}
}

cmd_shoal() {
  parse_node "$@"
  shift "$NODE_ARGS_USED"
  exec "$(conf bin)/shoal" -H "unix://$STATE/$NODE/shoal.sock" "$@"
}

cmd_exec() {
  parse_node "$@"
  shift "$NODE_ARGS_USED"
  (($#)) || die "exec: no command given"
  require_root exec
  exec nsenter --net="/run/netns/$(node_ns "$NODE_IDX")" --uts="$STATE/$NODE/uts" -- "$@"
}

# Waits for a SIGKILLed PID to be gone; one stuck in the kernel (state D) gets a bound.
wait_gone() {
  local deadline=$((SECONDS + STOP_GRACE))
  while running "$1"; do
    ((SECONDS < deadline)) || die "pid $1 is still there ${STOP_GRACE}s after SIGKILL"
    sleep 0.05
  done
}

cmd_kill() {
  parse_node "$@"
  require_root kill
  local pid
  pid=$(daemon_pid "$NODE")
  [ -n "$pid" ] || die "$NODE: shoald is not running"
  kill -9 "$pid"
  wait_gone "$pid"
}

cmd_stop() {
  parse_node "$@"
  require_root stop
  local pid deadline=$((SECONDS + STOP_GRACE))
  pid=$(daemon_pid "$NODE")
  [ -n "$pid" ] || die "$NODE: shoald is not running"
  kill -TERM "$pid"
  while running "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait_gone "$pid"
}

cmd_start() {
  parse_node "$@"
  require_root start
  [ -z "$(daemon_pid "$NODE")" ] || die "$NODE: shoald is already running (pid $(daemon_pid "$NODE"))"
  start_daemon "$NODE" "$NODE_IDX"
  wait_daemon "$NODE"
}

main() {
  local cmd=${1:-help}
  (($#)) && shift
  set_name "$NAME"
  case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  ls) cmd_ls "$@" ;;
  shoal) cmd_shoal "$@" ;;
  exec) cmd_exec "$@" ;;
  kill) cmd_kill "$@" ;;
  stop) cmd_stop "$@" ;;
  start) cmd_start "$@" ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
