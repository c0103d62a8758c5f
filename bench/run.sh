#!/usr/bin/env bash
# Every performance figure in docs/benchmarks.md, in one run, on loopback. Public tools only:
# Postfix's smtp-source/smtp-sink (Debian package "postfix"), python3, this repo's release build.
#
# usage: bench/run.sh [--quick]      (run as root: compare.sh reconfigures the local Postfix)
#   1. throughput side by side: direct / Postfix / mailveil (../shared/bench/compare.sh or
#      bench/compare.sh when vendored), plain 4 KiB x 20 sessions, and fan-out 100 and 1,000
#   2. sidecar latency: end-of-DATA -> 250, one session, fsync on (bench/latency.py)
#   3. memory: 1,000 idle inbound connections; a 25 MiB message split to 100 (bench/memory.py)
#   4. over distance: direct / Postfix / mailveil with 25 ms each way to the sink (bench/distance.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${1:-}
N=20000; NF=20000
[ "$QUICK" = --quick ] && { N=3000; NF=3000; }
COMPARE=${COMPARE:-../shared/bench/compare.sh}
[ -f "$COMPARE" ] || COMPARE=bench/compare.sh
command -v smtp-sink >/dev/null || { echo "needs smtp-source/smtp-sink: apt-get install postfix" >&2; exit 2; }
cargo build --release --locked >/dev/null
BIN=target/release/mailveil

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== throughput, plain: $N x 4 KiB, 20 sessions"
bash "$COMPARE" --mode plain -n "$N" -s 20 -l 4096 --bin "$BIN"
for r in 100 1000; do
  echo "== throughput, fan-out: To: shows $r addresses, $NF private copies in all"
  bash "$COMPARE" --mode fanout -n "$NF" -r "$r" -s 20 -l 4096 --bin "$BIN" --only postfix,mailveil
done

echo "== throughput over distance: 25 ms each way between relay and sink, 20 connections"
bash bench/distance.sh -n $([ "$QUICK" = --quick ] && echo 500 || echo 2000) --bin "$BIN"

work=$(mktemp -d)
SINK_PID=; MV_PID=
cleanup() { for p in $MV_PID $SINK_PID; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
smtp-sink -u postfix -c 127.0.0.1:2636 5000 >/dev/null 2>&1 & SINK_PID=$!
cat >"$work/mailveil.toml" <<TOML
[server]
listen = "127.0.0.1:2538"
max_recipients = 1000
max_connections = 2000
max_message_size = 31457280
[privacy]
mode = "split"
[spool]
dir = "$work/spool"
[[upstream]]
name = "sink"
host = "127.0.0.1"
port = 2636
tls = "none"
max_connections = 20
[metrics]
listen = "127.0.0.1:9798"
TOML
start_relay() {
  ulimit -n 65536 2>/dev/null || true
  "$BIN" run -c "$work/mailveil.toml" >"$work/mailveil.log" 2>&1 & MV_PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2538) 2>/dev/null && break; sleep 0.1; done
}
stop_relay() { kill -TERM "$MV_PID"; wait "$MV_PID" 2>/dev/null || true; MV_PID=; }

echo "== sidecar latency (spool on $(df --output=source "$work" | tail -1), fsync on)"
start_relay
python3 bench/latency.py 127.0.0.1:2538 -n $([ "$QUICK" = --quick ] && echo 500 || echo 5000)
stop_relay

echo "== memory"
start_relay
python3 bench/memory.py "$MV_PID" 127.0.0.1:2538 idle -n 1000
stop_relay
start_relay
python3 bench/memory.py "$MV_PID" 127.0.0.1:2538 bigsplit --size 25 -r 100
stop_relay
