#!/usr/bin/env bash
# Instructions per message in the server's user space, counted by callgrind
# (the count does not depend on what else the machine is doing, so two
# builds can be compared on a noisy machine).
#
#   bench/callgrind.sh                          # this build: echo and broadcast
#   bench/callgrind.sh /tmp/old/rust-chat       # another binary, the same way
#   SERVER_ARGS="--workers 2" bench/callgrind.sh # with more server flags
#   SCENARIOS=persist SERVER_ARGS="--fsync never" bench/callgrind.sh
#                                               # the chat on its store
#   PEER=1 bench/callgrind.sh bench/target/uws/peer
#                                               # a peer (it takes only its address)
#
# The server runs under valgrind while the load generator runs against it;
# SIGTERM ends the server, and callgrind reports the total. That is done
# twice, for 2 s and for 6 s of load, and the difference in instructions is
# divided by the difference in messages echoed (or deliveries made): the
# cost of one more message, without start-up and connection set-up (which
# would otherwise weigh more on whichever build got through fewer messages).
# Needs valgrind (Debian's package).
set -euo pipefail
cd "$(dirname "$0")/.."
BINARY=${1:-target/release/rust-chat}
OUT=target/callgrind
mkdir -p "$OUT"
[ "$BINARY" != target/release/rust-chat ] || cargo build --release --quiet
(cd bench && cargo build --release --quiet)

run_once() { # scenario seconds loadgen-args... -> "instructions count"
  local scenario=$1 seconds=$2; shift 2
  local log="$OUT/$scenario.log"
  # An empty data directory each run (ignored by a binary from before the store).
  export RUST_CHAT_DATA_DIR="$OUT/data-$scenario"
  rm -rf "$RUST_CHAT_DATA_DIR"
  local args=(--bind 127.0.0.1:0 --rate-limit 0 --max-room-members 100000)
  [ -z "${PEER:-}" ] || args=(127.0.0.1:0)
  # shellcheck disable=SC2086 # SERVER_ARGS is words
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$scenario.out" "$BINARY" "${args[@]}" \
    ${SERVER_ARGS:-} >"$OUT/$scenario.stdout" 2>"$log" &
  local pid=$!
  for _ in $(seq 200); do grep -q 'listening on ws://' "$OUT/$scenario.stdout" && break; sleep 0.1; done
  local addr
  addr=$(grep -o 'ws://[0-9.:]*' "$OUT/$scenario.stdout" | head -n 1 | sed 's|ws://||')
  local result
  result=$(bench/target/release/loadgen --addr "$addr" --seconds "$seconds" --warmup 0 "$@" --label callgrind)
  kill -TERM "$pid"; wait "$pid" || true
  local instructions count
  instructions=$(grep -o 'Collected : [0-9]*' "$log" | grep -o '[0-9]*$')
  count=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r.get("messages") or r.get("deliveries"))' "$result")
  echo "$instructions $count"
}

measure() { # scenario loadgen-args...
  local scenario=$1; shift
  local short long
  short=$(run_once "$scenario" 2 "$@")
  long=$(run_once "$scenario" 6 "$@")
  python3 - "$scenario" $short $long <<'PY'
import sys
name, i1, c1, i2, c2 = sys.argv[1], *map(int, sys.argv[2:])
print(f"{name}: {i1} instr / {c1} msgs (2 s), {i2} / {c2} (6 s): {(i2 - i1) / (c2 - c1):.1f} instructions per message")
PY
}

# SCENARIOS picks (default: echo broadcast; also bulk, 64 KiB echoed; rooms, 100 rooms of 10); persist is the persist scenario's
# chat room (10 members, 1024 in flight; per delivery: a tenth of a message).
for scenario in ${SCENARIOS:-echo broadcast}; do
  case "$scenario" in
    echo) measure echo --mode echo --conns 100 --inflight 16 --size 32 ;;
    broadcast) [ -n "${ONLY_ECHO:-}" ] || measure broadcast --mode broadcast --conns 200 --inflight 8 --size 64 ;;
    rooms) measure rooms --mode broadcast --conns 1000 --room-size 10 --inflight 4 --size 64 ;;
    persist) measure persist --mode broadcast --conns 10 --inflight 1024 --size 64 ;;
    bulk) measure bulk --mode echo --conns 10 --inflight 4 --size 65536 ;;
    *) echo "unknown scenario: $scenario" >&2; exit 2 ;;
  esac
done
