#!/usr/bin/env bash
# The benchmark harness: rust-chat against a tokio-tungstenite peer, on the
# same machine in the same run, interleaved (A B A B ...) so that machine
# noise hits both alike. Prints one JSON line per run, then medians,
# min–max and ratios per scenario.
#
#   bench/run.sh              # every scenario, 3 runs each
#   RUNS=5 bench/run.sh echo  # one scenario, 5 runs
#   BASELINE=/tmp/old/rust-chat bench/run.sh echo broadcast idle
#                             # A/B: this build against an earlier binary
#                             # (e.g. the previous commit's), instead of the peer
#   PEERS="uws tungstenite" bench/run.sh echo
#                             # other peers: uws is uWebSockets, built by bench/uws.sh
#
# Scenarios: echo, broadcast, bulk, latency, idle, rooms (rust-chat only: many
# rooms of 10, --workers 1 against --workers 2), persist (rust-chat only: a
# chat room with --no-persist and each --fsync, issue 20; with BASELINE, also
# that binary's --fsync batch), deflate (rust-chat only,
# with and without compression). The server is pinned to core 0 and the load
# generator to core 1 (taskset). Every run is bounded in time; servers are
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(echo broadcast bulk latency idle deflate)
. bench/common.sh
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_server NAME ARGS... -> sets ADDR and SERVER_PID
start_server() {
  local name=$1; shift
  local log="$OUT/$name.log"
  # Each server its own, empty data directory (an environment variable, which
  # a baseline binary from before the store ignores).
  export RUST_CHAT_DATA_DIR="$OUT/data-$name-$RANDOM"
  rm -rf "$RUST_CHAT_DATA_DIR"
  case "$name" in
    rust-chat-baseline*) taskset -c 0 "$BASELINE" --bind 127.0.0.1:0 --rate-limit 0 \
                  --max-room-members 100000 --max-connections 100000 "$@" >"$log" 2>&1 & ;;
    rust-chat*) taskset -c "${SERVER_CPUS:-0}" ./target/release/rust-chat --bind 127.0.0.1:0 --rate-limit 0 \
                  --max-room-members 100000 --max-connections 100000 "$@" >"$log" 2>&1 & ;;
    tungstenite) taskset -c 0 bench/target/release/peer 127.0.0.1:0 >"$log" 2>&1 & ;;
    uws) taskset -c 0 bench/target/uws/peer 127.0.0.1:0 >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 100); do grep -q 'listening on ws://' "$log" && break; sleep 0.05; done
  ADDR=$(grep -o 'ws://[0-9.:]*' "$log" | head -n 1 | sed 's|ws://||')
}

stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

load() { taskset -c 1 "$LOADGEN" --addr "$ADDR" --seconds "$SECONDS_EACH" "$@"; }

run_one() { # scenario server -> one JSON line
  local scenario=$1 server=$2
  case "$scenario" in
    echo)      start_server "$server"; load --mode echo --conns 100 --inflight 16 --size 32 --label "$server" ;;
    broadcast) # Fan-out like for like: the peer keeps nothing, so rust-chat keeps nothing either
               # (the store's cost is the persist scenario's; an earlier binary ignores the variable).
               RUST_CHAT_NO_PERSIST=true start_server "$server"
               load --mode broadcast --conns 1000 --inflight 32 --size 64 --label "$server" ;;
    bulk)      start_server "$server"; load --mode echo --conns 10 --inflight 4 --size 65536 --label "$server" ;;
    latency)   start_server "$server"; load --mode latency --size 32 --label "$server" ;;
    idle)      start_server "$server"; load --mode idle --conns "${IDLE_CONNS:-10000}" --pid "$SERVER_PID" --label "$server" ;;
    persist)   # A chat room of 10 members; the sender keeps 64 (PERSIST_INFLIGHT) messages in flight, each
               # sent again when its own copy (its acknowledgement) comes back.
               case "$server" in
                 rust-chat-no-persist) start_server "$server" --no-persist ;;
                 rust-chat-fsync-*) start_server "$server" --fsync "${server#rust-chat-fsync-}" ;;
                 rust-chat-baseline-fsync-*) start_server "$server" --fsync "${server#rust-chat-baseline-fsync-}" ;;
               esac
               load --mode broadcast --conns 10 --inflight "${PERSIST_INFLIGHT:-64}" --size 64 --label "$server" ;;
    rooms)     # Many small rooms (ROOMS of 10, default 1,000: the per-process open-file limit of 20,000
               # bounds it), the first member of each the sender with 4 in flight; --workers 1 on core 0,
               # --workers 2 on cores 0 and 1 (the second shared with the load generator: this machine has two).
               case "$server" in
                 rust-chat-workers-1) start_server "$server" --no-persist --workers 1 --max-rooms 100000 ;;
                 rust-chat-workers-2) SERVER_CPUS=0,1 start_server "$server" --no-persist --workers 2 --max-rooms 100000 ;;
               esac
               load --mode broadcast --conns $(( ${ROOMS:-1000} * 10 )) --room-size 10 --inflight 4 --size 64 \
                 --pid "$SERVER_PID" --label "$server" ;;
    deflate)   case "$server" in
                 rust-chat-deflate) start_server rust-chat; load --mode echo --conns 100 --inflight 16 --size 1024 --deflate --label "$server" ;;
                 *) start_server "$server"; load --mode echo --conns 100 --inflight 16 --size 1024 --label "$server" ;;
               esac ;;
  esac
  stop_server
}

for scenario in "${SCENARIOS[@]}"; do
  case "$scenario" in
    deflate) pair=(rust-chat rust-chat-deflate) ;;
    rooms) pair=(rust-chat-workers-1 rust-chat-workers-2) ;;
    persist) pair=(rust-chat-no-persist rust-chat-fsync-batch rust-chat-fsync-always rust-chat-fsync-never)
             # With BASELINE: the earlier binary's `--fsync batch` beside this one's.
             [ -z "${BASELINE:-}" ] || pair+=(rust-chat-baseline-fsync-batch) ;;
    *) if [ -n "${BASELINE:-}" ]; then pair=(rust-chat rust-chat-baseline); else read -ra pair <<<"rust-chat ${PEERS:-tungstenite}"; fi ;;
  esac
  : >"$OUT/$scenario.jsonl"
  for _ in $(seq "$RUNS"); do
    for server in "${pair[@]}"; do
      run_one "$scenario" "$server" | tee -a "$OUT/$scenario.jsonl"
    done
  done
  python3 - "$OUT/$scenario.jsonl" "$scenario" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
metric = {"echo": "msgs_per_sec", "bulk": "mb_per_sec", "broadcast": "deliveries_per_sec",
          "latency": "rtt_p50_us", "idle": "kib_per_conn", "deflate": "msgs_per_sec",
          "persist": "msgs_per_sec", "rooms": "deliveries_per_sec"}[sys.argv[2]]
def summarise(key):
    """Prints each label's median, min and max of `key`."""
    per = {}
    for r in rows:
        per.setdefault(r["label"], []).append(r[key])
    for k, v in per.items():
        print(f"## {sys.argv[2]} {k}: {key} median {statistics.median(v):.4g} (min {min(v):.4g}, max {max(v):.4g})")
if sys.argv[2] == "persist":
    # Messages the room received per second (each member got every one), and their p99.
    for r in rows:
        r["msgs_per_sec"] = r["deliveries_per_sec"] / r["members"]
    summarise("latency_p99_us")
if sys.argv[2] == "rooms":
    # The server's CPU (all its threads) per delivery, and the median latency.
    summarise("server_ns_per_delivery")
    summarise("latency_p50_us")
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r[metric])
labels = list(by)
med = {k: statistics.median(v) for k, v in by.items()}
for k in labels:
    v = by[k]
    print(f"## {sys.argv[2]} {k}: {metric} median {med[k]:.4g} (min {min(v):.4g}, max {max(v):.4g}, n={len(v)})")
if len(labels) == 2:
    a, b = labels
    print(f"## {sys.argv[2]} ratio {a}/{b}: {med[a] / med[b]:.2f}")
elif len(labels) > 2:
    first = labels[0]
    for k in labels[1:]:
        print(f"## {sys.argv[2]} ratio {k}/{first}: {med[k] / med[first]:.2f}")
PY
done
