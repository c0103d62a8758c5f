#!/usr/bin/env bash
# Shaping benchmark: delivered rate vs the configured provider rate, measured over a window of
# WINDOW seconds at the sink, for one relay and for two relays sharing the limit through Redis.
#
#   bench/shaping.sh                 # RATE=20 msg/s, WINDOW=30 s
#   RATE=50 WINDOW=30 bench/shaping.sh
#   MODE=upstream bench/shaping.sh   # the limit is the upstream's own messages_per_second
#
# MODE=provider (default): one provider `alpha` paced at RATE. MODE=upstream: the upstream
# `sink` is paced at RATE (`[[upstream]] messages_per_second`), and the copies are spread over two
# unthrottled providers (`alpha`, `beta`), so the one limit holds across provider lanes.
#
# The sink fsyncs every message, so the lane needs enough connections (CONNECTIONS) for the sink
# not to be the bottleneck: what is measured must be the limiter.
#
# Each relay gets a backlog larger than the window can drain, so the lane is always saturated;
# the first WARMUP seconds (the burst) are skipped. The rate is copies whose capture file was
# written inside the window, divided by the window. Needs python3 and (for 2 nodes)
# redis-server. Every process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${MODE:-provider}
case "$MODE" in provider | upstream) ;; *) echo "MODE must be provider or upstream" >&2; exit 64 ;; esac
RATE=${RATE:-20}
WINDOW=${WINDOW:-30}
WARMUP=${WARMUP:-3}
BURST=${BURST:-5}
# Lane concurrency: enough that the sink's per-message fsync never becomes the limit.
CONNECTIONS=${CONNECTIONS:-32}

cargo build --release --quiet
BIN=$PWD/target/release/mailveil
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  python3 - "$1" <<'EOF'
import socket, sys, time
end = time.time() + 30
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit("port %s never opened" % sys.argv[1])
EOF
}

stop_all() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

# run_case NODES: prints "mode=MODE nodes=N configured=R measured=M deviation=D%"
run_case() {
  local nodes=$1 case_dir="$work/case$1"
  mkdir -p "$case_dir/captured"
  local sink_port
  sink_port=$(free_port)
  "$BIN" sink --listen "127.0.0.1:$sink_port" --dir "$case_dir/captured" >"$case_dir/sink.log" 2>&1 &
  pids+=($!)
  wait_port "$sink_port"
  local cluster=""
  if [ "$nodes" -gt 1 ]; then
    local redis_port
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$case_dir" >"$case_dir/redis.log" 2>&1 &
    pids+=($!)
    wait_port "$redis_port"
    cluster=$'[cluster]\nredis_url = "redis://127.0.0.1:'"$redis_port"$'/"\nreplicas = '"$nodes"
  fi
  local upstream_limit="" provider_limit beta=""
  if [ "$MODE" = upstream ]; then
    upstream_limit=$'messages_per_second = '"$RATE"$'\nburst = '"$BURST"
    provider_limit=""
    beta=$'[[provider]]\nname = "beta"\ndomains = ["b.test"]\nmax_connections = '"$CONNECTIONS"
  else
    provider_limit=$'messages_per_second = '"$RATE"$'\nburst = '"$BURST"
  fi
  local smtp_ports=()
  for n in $(seq 1 "$nodes"); do
    local port
    port=$(free_port)
    smtp_ports+=("$port")
    cat >"$case_dir/relay$n.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
max_recipients = 1000
[spool]
dir = "$case_dir/spool$n"
[[upstream]]
name = "sink"
host = "127.0.0.1"
port = $sink_port
tls = "none"
max_connections = $CONNECTIONS
$upstream_limit
[[provider]]
name = "alpha"
domains = ["a.test"]
$provider_limit
max_connections = $CONNECTIONS
$beta
[metrics]
listen = "127.0.0.1:0"
$cluster
EOF
    "$BIN" run -c "$case_dir/relay$n.toml" >"$case_dir/relay$n.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
  done
  python3 - "$RATE" "$WINDOW" "$WARMUP" "$nodes" "$MODE" "$case_dir/captured" "${smtp_ports[@]}" <<'EOF'
import glob, math, os, smtplib, sys, time
rate, window, warmup, nodes = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
mode, captured, ports = sys.argv[5], sys.argv[6], [int(p) for p in sys.argv[7:]]
# Upstream mode: every other copy to the second provider, so both lanes feed the one upstream.
domains = ["a.test", "b.test"] if mode == "upstream" else ["a.test"]
# Enough copies to keep every relay's lane busy past the end of the window.
per_node = math.ceil(rate * (warmup + window + 5) / nodes) + 50
for n, port in enumerate(ports):
    rcpts = ["n%d-%d@%s" % (n, i, domains[i % len(domains)]) for i in range(per_node)]
    with smtplib.SMTP("127.0.0.1", port) as s:
        for start in range(0, len(rcpts), 500):
            chunk = rcpts[start:start + 500]
            to = ",\r\n ".join(chunk)
            body = "From: bench@src.test\r\nTo: %s\r\nSubject: shaping bench\r\n\r\nx\r\n" % to
            s.sendmail("bench@src.test", chunk, body)
total = per_node * len(ports)
deadline = time.time() + warmup + window + 120
def stamps():
    return sorted(os.stat(p).st_mtime for p in glob.glob(os.path.join(captured, "*.json")))
while time.time() < deadline:
    t = stamps()
    if t and t[-1] - t[0] >= warmup + window + 1:
        break
    time.sleep(0.5)
t = stamps()
start = t[0] + warmup
inside = [x for x in t if start <= x < start + window]
measured = len(inside) / window
print("mode=%s nodes=%d configured=%.2f/s measured=%.2f/s deviation=%+.1f%% (%d copies in %.0f s)"
      % (mode, nodes, rate, measured, 100.0 * (measured - rate) / rate, len(inside), window))
EOF
  stop_all
}

echo "shaping bench: MODE=$MODE RATE=$RATE/s BURST=$BURST CONNECTIONS=$CONNECTIONS WINDOW=${WINDOW}s WARMUP=${WARMUP}s ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
run_case 1
if command -v redis-server >/dev/null 2>&1; then
  run_case 2
else
  echo "nodes=2 skipped: redis-server not installed"
fi
