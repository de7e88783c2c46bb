# Shared by bench/run.sh and bench/cluster.sh (sourced from the repository
# root): the run counts, the output folder, release builds of the server and
# the load generator, and the open-file limit raised as far as allowed.
RUNS=${RUNS:-3}
SECONDS_EACH=${SECONDS_EACH:-5}
OUT=target/bench
mkdir -p "$OUT"
cargo build --release --quiet
(cd bench && cargo build --release --quiet)
LOADGEN=bench/target/release/loadgen
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
