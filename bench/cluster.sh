#!/usr/bin/env bash
# Rooms across nodes (issue 14): a 1,000-member room split over two
# `rust-chat --redis` nodes and one redis-server, against the same room on
# one node without Redis, interleaved in the same run (A B A B ...); then
# what one room's publishing script can take in Redis (redis-benchmark
# running it, pipelined), with redis-benchmark's own PUBLISH and SET of the
# same machine beside it for scale. Every run is bounded; everything it
# starts is stopped at the end.
#
#   bench/cluster.sh            # 3 runs each
#   RUNS=5 bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/common.sh
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT/redis"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# node NAME ARGS... -> sets ADDR (and remembers the process to stop)
node() {
  local log="$OUT/$1.log"; shift
  ./target/release/rust-chat --bind 127.0.0.1:0 --rate-limit 0 --max-room-members 100000 \
    --max-connections 100000 "$@" >"$log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do grep -q 'listening on ws://' "$log" && break; sleep 0.05; done
  ADDR=$(grep -o 'ws://[0-9.:]*' "$log" | head -n 1 | sed 's|ws://||')
}

stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }

redis_up() {
  REDIS_PORT=$(free_port)
  rm -rf "$OUT/redis"; mkdir -p "$OUT/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT/redis" >/dev/null &
  pids+=("$!")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
}

load() { "$LOADGEN" --mode broadcast --conns 1000 --inflight 32 --size 64 --seconds "$SECONDS_EACH" "$@"; }

: >"$OUT/cluster.jsonl"
for _ in $(seq "$RUNS"); do
  node one-node; one=$ADDR
  load --addr "$one" --label one-node | tee -a "$OUT/cluster.jsonl"
  stop_all
  redis_up
  node node-a --redis "redis://127.0.0.1:$REDIS_PORT"; a=$ADDR
  node node-b --redis "redis://127.0.0.1:$REDIS_PORT"; b=$ADDR
  load --addr "$a" --addr2 "$b" --label two-nodes-redis | tee -a "$OUT/cluster.jsonl"
  stop_all
done
python3 - "$OUT/cluster.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
for label, rs in by.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    lost = sum(r["out_of_order_or_lost"] for r in rs)
    print(f"## {label}: deliveries/s median {med('deliveries_per_sec'):.4g} "
          f"(min {min(r['deliveries_per_sec'] for r in rs):.4g}, max {max(r['deliveries_per_sec'] for r in rs):.4g}), "
          f"fan-out p50 {med('latency_p50_us'):.0f} us, p99 {med('latency_p99_us'):.0f} us, out of order or lost {lost}, n={len(rs)}")
if len(by) == 2:
    a, b = list(by)
    ma = statistics.median(r["deliveries_per_sec"] for r in by[a])
    mb = statistics.median(r["deliveries_per_sec"] for r in by[b])
    print(f"## ratio {b}/{a}: {mb / ma:.2f}")
PY

# What one room's sequencing takes in Redis: the publishing script itself,
# pipelined 16 deep from 50 clients, on one room's keys (one room is one
# script at a time: this is its ceiling), beside PUBLISH and SET.
redis_up
SCRIPT=$(python3 - <<'PY'
import re
src = open("src/broker/redis.rs").read()
life = re.search(r'macro_rules! epoch_or_new_life \{\s*\(\) => \{\s*r"(.*?)"\s*\};', src, re.S).group(1)
publish = re.search(r'pub const PUBLISH_SCRIPT: &str = concat!\(\s*epoch_or_new_life!\(\),\s*r"(.*?)"\s*\);', src, re.S).group(1)
print(life + publish, end="")
PY
)
echo "## redis-benchmark, the same machine (requests/s, 50 clients, pipelined 16 deep):"
rps() { tr '\r' '\n' | grep -v '^$' | python3 -c 'import csv, sys; [print(f"##   {sys.argv[1]}: {float(r[-7]):.0f}") for r in csv.reader(sys.stdin) if len(r) >= 8 and r[-7] != "rps"]' "$1"; }
redis-benchmark -p "$REDIS_PORT" --csv -n 200000 -c 50 -P 16 -t set 2>/dev/null | rps SET
redis-benchmark -p "$REDIS_PORT" --csv -n 200000 -c 50 -P 16 publish 'rc:{bench}:msg' 'a 64-byte message xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' 2>/dev/null | rps PUBLISH
redis-benchmark -p "$REDIS_PORT" --csv -n 200000 -c 50 -P 16 eval "$SCRIPT" 3 'rc:{bench}:epoch' 'rc:{bench}:seq' 'rc:{bench}:log' 'rc:{bench}:msg' \
  '{"nick":"m0","room":"bench","seq":0,"text":"b 1 2 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","time":0,"type":"message"}' 100 2>/dev/null \
  | rps "one room's publishing script (INCR + XADD + PUBLISH), EVAL"
SHA=$(redis-cli -p "$REDIS_PORT" script load "$SCRIPT")
redis-benchmark -p "$REDIS_PORT" --csv -n 200000 -c 50 -P 16 evalsha "$SHA" 3 'rc:{bench}:epoch' 'rc:{bench}:seq' 'rc:{bench}:log' 'rc:{bench}:msg' \
  '{"nick":"m0","room":"bench","seq":0,"text":"b 1 2 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","time":0,"type":"message"}' 100 2>/dev/null \
  | rps "the same by SHA1 (EVALSHA, as the nodes send it)"
stop_all
