#!/usr/bin/env bash
# Apps benchmark: plain relay throughput (../shared/bench/compare.sh, mailveil only) without
# apps, then with 10 `[[app]]`s configured and delivery events on, alternating ROUNDS times.
# The load generator's client (127.0.0.1) is app `bench`; nine more apps are configured for
# other networks (their configuration is looked at for every session, as in production).
#
#   bench/apps.sh                  # events to the outbox files only
#   WEBHOOK=1 bench/apps.sh        # and POSTed to a local webhook receiver (Python)
#   LIMITS=1 bench/apps.sh         # and app `bench` has a rate and a daily recipient quota
#   ROUNDS=3 N=5000 bench/apps.sh
#
# compare.sh runs `$BIN run -c FILE`; here BIN is a wrapper that appends the apps to FILE
# before it starts the release binary. Needs postfix's smtp-source/smtp-sink and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-5000}
COMPARE=${COMPARE:-../shared/bench/compare.sh}
cargo build --release --quiet
REAL=$PWD/target/release/mailveil
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

apps="$work/apps.toml"
{
  printf '\n[[app]]\nname = "bench"\nnetworks = ["127.0.0.1/32"]\nsenders = ["@src.test"]\n[app.events]\n'
  if [ "${WEBHOOK:-0}" = 1 ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf 'webhook_url = "http://127.0.0.1:%s/hook"\nwebhook_secret_env = "BENCH_WEBHOOK_SECRET"\n' "$port"
  fi
  if [ "${LIMITS:-0}" = 1 ]; then
    printf '[app.limits]\nmessages_per_second = 100000.0\nburst = 1000\nrecipients_per_day = 100000000\n'
  fi
  for i in 1 2 3 4 5 6 7 8 9; do
    printf '\n[[app]]\nname = "app%s"\nnetworks = ["127.1.%s.0/24"]\nsenders = ["@app%s.test"]\n[app.events]\n' "$i" "$i" "$i"
  done
} >"$apps"

if [ "${WEBHOOK:-0}" = 1 ]; then
  python3 tests/relay/support/webhook_receiver.py "$port" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
    "$work/received.jsonl" "$work/mode" >/dev/null 2>&1 &
  pids+=($!)
  export BENCH_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
fi

# compare.sh calls `$BIN run -c FILE` and stops it with SIGTERM. The wrappers append the apps
# (or not), run the release binary as a child, and on SIGTERM note its CPU time (user + system,
# from /proc) before passing the signal on: CPU per message is steadier than wall-clock
# throughput on a machine whose disk latency varies.
make_wrapper() { # $1 path, $2 file appended to the config ("" for none)
  cat >"$1" <<WRAP
#!/usr/bin/env bash
if [ "\$1" = run ] && [ "\$2" = -c ] && [ -n "$2" ]; then cat "$2" >>"\$3"; fi
"$REAL" "\$@" & child=\$!
stop() {
  read -r -a f </proc/\$child/stat
  echo "\$(( f[13] + f[14] ))" >>"$work/cpu-ticks.\$(basename "\$0")"
  kill -TERM \$child; wait \$child
}
trap stop TERM
wait \$child
WRAP
  chmod +x "$1"
}
plain="$work/mailveil-plain"
wrapper="$work/mailveil-with-apps"
make_wrapper "$plain" ""
make_wrapper "$wrapper" "$apps"

for r in $(seq "$ROUNDS"); do
  echo "round $r: without apps"
  bash "$COMPARE" --only mailveil -n "$N" --bin "$plain" | grep -E "msg/s|RSS" || true
  echo "round $r: 10 apps, events on${WEBHOOK:+ + webhook}${LIMITS:+ + limits}"
  bash "$COMPARE" --only mailveil -n "$N" --bin "$wrapper" | grep -E "msg/s|RSS" || true
done
hz=$(getconf CLK_TCK)
for w in mailveil-plain mailveil-with-apps; do
  echo "$w: CPU per 1000 messages (ms), each round: $(awk -v hz="$hz" -v n="$N" '{printf "%.0f ", $1 * 1000 / hz * 1000 / n}' "$work/cpu-ticks.$w")"
done
if [ "${WEBHOOK:-0}" = 1 ]; then
  echo "webhook received $(wc -l <"$work/received.jsonl") events"
fi
