#!/usr/bin/env bash
# Relay throughput over distance: compare.sh's plain mode with bench/latency_proxy.py (D ms each
# way, default 25: a 50 ms round trip) between the relay and the sink. The proxy stands in for
# netem, which this kernel lacks.
#   direct   smtp-source -d -s C -> proxy -> smtp-sink   (C reused connections, no pipelining:
#                                                        what a non-pipelining client can reach)
#   postfix  smtp-source -> Postfix relay -> proxy -> smtp-sink   (pipelines; C connections)
#   mailveil smtp-source -> mailveil      -> proxy -> smtp-sink   (C connections)
# Relays get N messages of L bytes from S inbound sessions on loopback; the clock stops when the
# sink has all N. A fresh proxy per run counts the connections to the sink, the most open at once
# and the client's flights (round trips waited for), printed per message. Postfix: default_destination_concurrency_limit = C, connection caching on for the relay
# host. mailveil: [[upstream]] max_connections = C, and the default provider lane raised to C.
#
# usage: distance.sh [-n MESSAGES] [-s SESSIONS] [-l BYTES] [-c CONNECTIONS] [--delay-ms D]
#                    [--bin PATH] [--only direct,postfix,mailveil]
# Needs root for the Postfix peer: it rewrites /etc/postfix/main.cf and master.cf for the run and
# puts both files back on exit. Every process it starts is stopped by its PID on exit.
set -euo pipefail
N=2000 S=20 L=4096 C=20 D=25 BIN=target/release/mailveil ONLY=direct,postfix,mailveil
while [ $# -gt 0 ]; do case $1 in
  -n) N=$2; shift 2;; -s) S=$2; shift 2;; -l) L=$2; shift 2;; -c) C=$2; shift 2;;
  --delay-ms) D=$2; shift 2;; --bin) BIN=$2; shift 2;; --only) ONLY=$2; shift 2;;
  *) echo "unknown argument $1" >&2; exit 2;; esac; done
command -v smtp-source >/dev/null || { echo "needs smtp-source/smtp-sink: apt-get install postfix" >&2; exit 2; }
PROXY=$(cd "$(dirname "$0")" && pwd)/latency_proxy.py
SINK_PORT=2646 PROXY_PORT=2647 PF_PORT=2547 MV_PORT=2548 MV_METRICS=9797
LIMIT=600 # seconds: bound on every wait (a run of 2,000 takes 10-40 s)
work=$(mktemp -d)
SINK_PID= PROXY_PID= MV_PID= PF_STARTED= PF_SAVED=
cleanup() {
  for p in $MV_PID $PROXY_PID $SINK_PID; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PF_STARTED" ]; then postfix stop >/dev/null 2>&1 || true; fi
  if [ -n "$PF_SAVED" ]; then cp "$work/main.cf" /etc/postfix/main.cf; cp "$work/master.cf" /etc/postfix/master.cf; fi
  rm -rf "$work"
}
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
start() { # sink and a fresh proxy in front of it
  for p in $SINK_PORT $PROXY_PORT; do
    # smtp-sink listens with SO_REUSEPORT: a stray one would silently take a share of the messages
    if port_busy $p; then echo "port $p is already in use; not measuring" >&2; exit 2; fi
  done
  smtp-sink -u postfix -c 127.0.0.1:$SINK_PORT 1000 >"$work/sink.out" 2>&1 & SINK_PID=$!
  python3 "$PROXY" --listen 127.0.0.1:$PROXY_PORT --target 127.0.0.1:$SINK_PORT --delay-ms "$D" \
    2>"$work/proxy.err" & PROXY_PID=$!
  wait_port $SINK_PORT
  # the proxy says when it listens (a probe connection would count as one to the sink)
  for _ in $(seq 100); do grep -q listening "$work/proxy.err" && break; sleep 0.1; done
}
stop() { # sets CONNS: the proxy's count of connections to the sink
  kill $PROXY_PID; wait $PROXY_PID 2>/dev/null || true; PROXY_PID=
  kill $SINK_PID; wait $SINK_PID 2>/dev/null || true; SINK_PID=
  CONNS=$(grep -o 'connections=[0-9]* peak_open=[0-9]* client_flights=[0-9]*' "$work/proxy.err" || echo "(no proxy figures)")
}
sink_wait() { # until the sink has seen $1 messages; LIMIT seconds at most
  python3 - "$work/sink.out" "$1" "$LIMIT" <<'PY'
import re, sys, time
path, want = sys.argv[1], int(sys.argv[2]); end = time.time() + int(sys.argv[3]); got = 0
while time.time() < end:
    m = re.findall(rb"mesg=(\d+)", open(path, "rb").read()); got = int(m[-1]) if m else 0
    if got >= want: sys.exit(0)
    time.sleep(0.01)
sys.exit(f"timeout: sink saw {got} of {want}")
PY
}
now() { date +%s.%N; }
pf_queued() { find /var/spool/postfix/{incoming,active,deferred,maildrop} -type f 2>/dev/null | wc -l; }
postfix_drained() { # Postfix's queue was empty at the start: wait until it is again (60 s at most)
  for _ in $(seq 600); do [ "$(pf_queued)" = 0 ] && return 0; sleep 0.1; done
  echo "postfix: $(pf_queued) messages still queued after the run (see postqueue -p)" >&2
}
measure() { # $1 label, $2 port, then smtp-source options
  local label=$1 port=$2; shift 2
  start; local t0 t1; t0=$(now)
  timeout $LIMIT smtp-source "$@" -m "$N" -l "$L" -N -f bench@src.test -t user@dest.test 127.0.0.1:$port
  sink_wait "$N"; t1=$(now)
  # the sink counts a message at its end of data; its 250 still has to cross the proxy, and a relay
  # that loses it retries (a duplicate), so the proxy stays up until the relay has its replies
  sleep "$(python3 -c "print(1 + 4 * $D / 1000)")"
  [ "$label" = postfix ] && postfix_drained
  stop
  python3 -c "import sys; l,t,n,c=sys.argv[1],float(sys.argv[3])-float(sys.argv[2]),int(sys.argv[4]),sys.argv[5]; f=int(c.rsplit('=',1)[1]) if 'flights=' in c else 0; print(f'{l}: {n} messages at sink in {t:.2f}s = {n/t:.1f} msg/s; to the sink: {c} ({f/n:.2f} round trips per message)')" \
    "$label" "$t0" "$t1" "$N" "$CONNS"
}

echo "distance: $N x $L B, $S inbound sessions, $C connections to the sink, $D ms each way ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
case ",$ONLY," in *,direct,*) measure direct $PROXY_PORT -d -s "$C";; esac

case ",$ONLY," in *,postfix,*)
  if postfix status >/dev/null 2>&1; then echo "postfix: already running; stop it first (postfix stop)" >&2; exit 2; fi
  if [ "$(pf_queued)" != 0 ]; then echo "postfix: $(pf_queued) messages already queued would reach the sink; not measuring" >&2; exit 2; fi
  cp /etc/postfix/main.cf "$work/main.cf"; cp /etc/postfix/master.cf "$work/master.cf"; PF_SAVED=1
  postconf -e 'inet_interfaces = loopback-only' 'inet_protocols = ipv4' 'mydestination =' \
    "relayhost = [127.0.0.1]:$PROXY_PORT" 'mynetworks = 127.0.0.0/8' 'smtp_tls_security_level = none' \
    'smtpd_relay_restrictions = permit_mynetworks, reject' 'maillog_file = /var/log/postfix-bench.log' \
    "default_destination_concurrency_limit = $C" "smtp_connection_cache_destinations = [127.0.0.1]:$PROXY_PORT"
  grep -q "^$PF_PORT " /etc/postfix/master.cf || echo "$PF_PORT inet n - n - - smtpd" >>/etc/postfix/master.cf
  PF_STARTED=1; postfix start >/dev/null 2>&1; sleep 1
  measure postfix $PF_PORT -s "$S"
  postfix stop >/dev/null 2>&1 || true; PF_STARTED=;;
esac

case ",$ONLY," in *,mailveil,*)
  [ -x "$BIN" ] || { echo "mailveil: no binary at $BIN" >&2; exit 2; }
  cat >"$work/mailveil.toml" <<TOML
[server]
listen = "127.0.0.1:$MV_PORT"
max_recipients = 100000
[access]
networks = ["127.0.0.0/8"]
[privacy]
mode = "split"
max_visible_recipients = 1
[spool]
dir = "$work/spool"
[[upstream]]
name = "sink"
host = "127.0.0.1"
port = $PROXY_PORT
tls = "none"
max_connections = $C
[[provider]]
name = "default"
max_connections = $C
[metrics]
listen = "127.0.0.1:$MV_METRICS"
TOML
  if port_busy $MV_PORT; then echo "port $MV_PORT is already in use; not measuring" >&2; exit 2; fi
  "$BIN" run -c "$work/mailveil.toml" >"$work/mailveil.log" 2>&1 & MV_PID=$!
  wait_port $MV_PORT
  measure mailveil $MV_PORT -s "$S"
  kill -TERM $MV_PID 2>/dev/null; wait $MV_PID 2>/dev/null || true; MV_PID=;;
esac
