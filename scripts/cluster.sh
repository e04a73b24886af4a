#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, loopback only, for trying and testing cluster mode.
#
#   scripts/cluster.sh up            start a head node and a worker node (whichever is not running)
#                                    and print `export RAY_ADDRESS=LOCALHOST:<port>`
#   scripts/cluster.sh address       print the address to join (LOCALHOST:<port>)
#   scripts/cluster.sh status        each node's PIDs, then `ray status` of this cluster
#   scripts/cluster.sh kill-worker   SIGKILL every process of the worker node (a machine lost);
#                                    `up` starts a fresh worker node again
#   scripts/cluster.sh down          stop both nodes: exactly this cluster's processes, by PID
#   scripts/cluster.sh s3-up         start an S3-compatible object server (moto) on 127.0.0.1 and
#                                    print `export AWS_ENDPOINT_URL=http://127.0.0.1:<port>`
#   scripts/cluster.sh s3-down       stop that server, by PID (its objects live in memory: gone)
#
# Each node is its own `ray start --block` (run in the background, so its PID is the node's) with
# its own temp dir, 1 CPU (a logical resource; on a real cluster each would be a machine) and a
# custom resource: `spd_head` on the head, `spd_worker` on the worker. All ports are free ones.
#
# Loopback only: `ray start` rewrites 127.0.0.1 to the machine's outward IP (ray-project/ray#59110)
# and would then listen on every interface. The head runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# which keeps its IP at 127.0.0.1 and makes it listen there only; everything that joins it (the
# worker node, `spd train`, `ray status`) uses the spelling LOCALHOST, which resolves to 127.0.0.1
# but is not rewritten. Token authentication stays off (nothing is reachable from outside).
#
# Never `ray stop` here: it stops every Ray process of this user on the machine, other people's
# included. `down` kills only this cluster's processes: each node's `ray start` PID (recorded in the
# state directory), its descendants, and any process whose command line names the node's temp dir.
#
# The object server (`pip install -e '.[s3]'`) is moto's standalone server: a real process speaking
# the S3 HTTP API, objects in its memory, any access key accepted. It stands in for S3, MinIO or Ceph.
#
# Environment:
#   SPD_CLUSTER_DIR           state directory (PIDs, logs, address); default /tmp/spd-cluster-<uid>
#   SPD_CLUSTER_HEAD_CPUS     CPUs of the head node (default 1)
#   SPD_CLUSTER_WORKER_CPUS   CPUs of the worker node (default 1)
#   SPD_CLUSTER_START_TIMEOUT seconds a node (or the object server) may take to start (default 300)
#   SPD_CLUSTER_NODE_TIMEOUT  seconds without heartbeat before the head declares a node dead
#                             (default 10; Ray's default is about 30)
set -euo pipefail

STATE_DIR="${SPD_CLUSTER_DIR:-/tmp/spd-cluster-$(id -u)}"
HEAD_CPUS="${SPD_CLUSTER_HEAD_CPUS:-1}"
WORKER_CPUS="${SPD_CLUSTER_WORKER_CPUS:-1}"
NODE_TIMEOUT="${SPD_CLUSTER_NODE_TIMEOUT:-10}"
START_TIMEOUT="${SPD_CLUSTER_START_TIMEOUT:-300}" # seconds for a node to come up (a loaded 2-core machine is slow)

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

command -v ray >/dev/null || die "the 'ray' command is not on PATH (activate the project's venv)"
PYTHON="$(dirname "$(command -v ray)")/python"

# N free TCP ports on 127.0.0.1 (bound together, so distinct).
free_ports() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# PIDs of a node: its `ray start` process, that one's descendants, and processes whose command line
# names the node's temp dir (workers orphaned by a dead raylet). Empty when the node is gone.
node_pids() {
    local node="$1" pid=0 tmp=""
    [[ -f "$STATE_DIR/$node.pid" ]] && pid="$(cat "$STATE_DIR/$node.pid")"
    [[ -f "$STATE_DIR/$node.tmp" ]] && tmp="$(cat "$STATE_DIR/$node.tmp")"
    [[ "$pid" != 0 || -n "$tmp" ]] || return 0
    "$PYTHON" - "$pid" "$tmp" <<'EOF'
import os, sys
import psutil

pid, tmp = int(sys.argv[1]), sys.argv[2]
found = set()
try:
    root = psutil.Process(pid) if pid else None
    if root is not None and root.status() != psutil.STATUS_ZOMBIE:
        found |= {root.pid} | {c.pid for c in root.children(recursive=True)}
except psutil.Error:
    pass
if tmp:
    for p in psutil.process_iter(["pid", "cmdline", "uids", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.info["uids"].real != os.getuid():
                continue
            if any(tmp in a for a in p.info["cmdline"] or ()):
                found.add(p.pid)
        except (psutil.Error, TypeError):
            pass
found.discard(os.getpid())
print(" ".join(map(str, sorted(found))))
EOF
}

# Whether the node's `ray start` process is alive (a killed one may linger as a zombie for a moment).
node_running() {
    [[ -f "$STATE_DIR/$1.pid" ]] || return 1
    local stat
    stat="$(ps -o stat= -p "$(cat "$STATE_DIR/$1.pid")" 2>/dev/null)" || return 1
    [[ -n "$stat" && "$stat" != Z* ]]
}

# `ray start --block <args>` in the background with its own temp dir; records its PID and temp dir,
# then waits until it reports the node started.
start_node() {
    local node="$1"
    shift
    local tmp ports deadline
    tmp="$(mktemp -d "/tmp/spdray-$node.XXXXXX")" # short: Ray's socket paths must stay < 108 chars
    echo "$tmp" >"$STATE_DIR/$node.tmp"
    : >"$STATE_DIR/$node.log" # truncated here: the wait below must not see an old run's lines
    read -r -a ports <<<"$(free_ports 6)"
    RAY_ADDRESS="$(cat "$STATE_DIR/address")" RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
        nohup ray start --block --disable-usage-stats --temp-dir "$tmp" \
        --node-manager-port "${ports[0]}" --object-manager-port "${ports[1]}" \
        --metrics-export-port "${ports[2]}" --dashboard-agent-listen-port "${ports[3]}" \
        --dashboard-agent-grpc-port "${ports[4]}" --runtime-env-agent-port "${ports[5]}" \
        --min-worker-port 0 --max-worker-port 0 --object-store-memory 100000000 "$@" \
        >>"$STATE_DIR/$node.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/$node.pid"
    deadline=$((SECONDS + START_TIMEOUT))
    until grep -q "Ray runtime started" "$STATE_DIR/$node.log"; do
        if ! node_running "$node"; then
            echo "cluster.sh: the $node node exited; see $STATE_DIR/$node.log" >&2
            return 1
        fi
        ((SECONDS < deadline)) || die "the $node node did not start in ${START_TIMEOUT}s; see $STATE_DIR/$node.log"
        sleep 0.5
    done
}

# start_node, and once more if the node exited while starting: on a loaded machine Ray gives up on
# its own after 30 s when the raylet registers late ("timed out during startup"), fixed in Ray.
start_node_retrying() {
    start_node "$@" && return 0
    stop_nodes "$1"
    echo "cluster.sh: starting the $1 node once more" >&2
    start_node "$@" || die "the $1 node exited twice while starting; see $STATE_DIR/$1.log"
}

# SIGTERM to the nodes' `ray start --block` processes (each stops its node's processes), up to 15 s
# for them to go, then SIGKILL whatever of those nodes is left; their temp dirs are removed.
stop_nodes() {
    local node pids
    for node in "$@"; do
        if node_running "$node"; then
            kill -TERM "$(cat "$STATE_DIR/$node.pid")" 2>/dev/null || true
        fi
    done
    for node in "$@"; do
        for _ in $(seq 1 30); do
            pids="$(node_pids "$node")"
            [[ -z "$pids" ]] && break
            sleep 0.5
        done
        # shellcheck disable=SC2086
        [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
        for _ in $(seq 1 20); do
            [[ -z "$(node_pids "$node")" ]] && break
            sleep 0.5
        done
        if [[ -f "$STATE_DIR/$node.tmp" ]]; then
            rm -rf "$(cat "$STATE_DIR/$node.tmp")"
        fi
        rm -f "$STATE_DIR/$node.pid" "$STATE_DIR/$node.tmp"
    done
}

cmd_up() {
    mkdir -p "$STATE_DIR"
    if ! node_running head; then
        stop_nodes worker head # a worker node cannot outlive its head
        local port client_port dashboard_port
        read -r port client_port dashboard_port <<<"$(free_ports 3)"
        echo "LOCALHOST:$port" >"$STATE_DIR/address"
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_health_check_period_ms=1000 \
            RAY_health_check_timeout_ms=1000 RAY_health_check_failure_threshold="$NODE_TIMEOUT" \
            start_node_retrying head --head --node-ip-address 127.0.0.1 --port "$port" \
            --ray-client-server-port "$client_port" --dashboard-host 127.0.0.1 \
            --dashboard-port "$dashboard_port" --num-cpus "$HEAD_CPUS" --resources '{"spd_head": 1}'
    fi
    if ! node_running worker; then
        stop_nodes worker
        # explicit: a caller that runs a loopback-only local Ray (the test session) exports =0,
        # which would make `ray start` refuse to join a multi-node cluster
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 start_node_retrying worker --address "$(cat "$STATE_DIR/address")" \
            --num-cpus "$WORKER_CPUS" --resources '{"spd_worker": 1}'
    fi
    echo "export RAY_ADDRESS=$(cat "$STATE_DIR/address")"
}

cmd_down() {
    [[ -d "$STATE_DIR" ]] || return 0
    stop_nodes worker head
    rm -f "$STATE_DIR/address"
}

cmd_kill_worker() {
    local pids
    pids="$(node_pids worker)"
    [[ -n "$pids" ]] || die "no worker node is running (state: $STATE_DIR)"
    # shellcheck disable=SC2086
    kill -KILL $pids
    echo "killed the worker node's processes: $pids"
}

cmd_s3_up() {
    mkdir -p "$STATE_DIR"
    if ! node_running s3; then
        command -v moto_server >/dev/null || die "'moto_server' is not on PATH (pip install -e '.[s3]')"
        local port deadline
        port="$(free_ports 1)"
        echo "http://127.0.0.1:$port" >"$STATE_DIR/s3.endpoint"
        : >"$STATE_DIR/s3.log"
        nohup moto_server -H 127.0.0.1 -p "$port" >>"$STATE_DIR/s3.log" 2>&1 </dev/null &
        echo $! >"$STATE_DIR/s3.pid"
        deadline=$((SECONDS + START_TIMEOUT))
        # up once it answers an S3 request (the bucket list)
        until "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "$(cat "$STATE_DIR/s3.endpoint")" 2>/dev/null; do
            node_running s3 || die "the object server exited; see $STATE_DIR/s3.log"
            ((SECONDS < deadline)) || die "the object server did not start in ${START_TIMEOUT}s"
            sleep 0.5
        done
    fi
    echo "export AWS_ENDPOINT_URL=$(cat "$STATE_DIR/s3.endpoint")"
}

cmd_s3_down() {
    [[ -f "$STATE_DIR/s3.pid" ]] || return 0
    local pid
    pid="$(cat "$STATE_DIR/s3.pid")"
    if node_running s3; then
        kill -CONT "$pid" 2>/dev/null || true # a paused (SIGSTOP) server cannot act on SIGTERM
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            node_running s3 || break
            sleep 0.5
        done
        node_running s3 && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$STATE_DIR/s3.pid" "$STATE_DIR/s3.endpoint"
}

cmd_status() {
    [[ -f "$STATE_DIR/address" ]] || die "no cluster in $STATE_DIR (run: scripts/cluster.sh up)"
    echo "address: $(cat "$STATE_DIR/address")"
    local node
    for node in head worker; do
        if node_running "$node"; then
            echo "$node: running, temp dir $(cat "$STATE_DIR/$node.tmp"), pids $(node_pids "$node")"
        else
            echo "$node: stopped"
        fi
    done
    ray status --address "$(cat "$STATE_DIR/address")"
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
address)
    [[ -f "$STATE_DIR/address" ]] || die "no cluster in $STATE_DIR (run: scripts/cluster.sh up)"
    cat "$STATE_DIR/address"
    ;;
kill-worker) cmd_kill_worker ;;
s3-up) cmd_s3_up ;;
s3-down) cmd_s3_down ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
