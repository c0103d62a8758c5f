# mailveil container image.
#
#   docker build -t mailveil:0.1.0 .
#   docker run --read-only -v mailveil-spool:/var/spool/mailveil \
#     -v $PWD/mailveil.toml:/etc/mailveil/mailveil.toml:ro -e UPSTREAM_PASSWORD=... mailveil:0.1.0
#
# - Built with the pinned toolchain (rust 1.95), `--locked` against Cargo.lock.
# - Runs as a fixed non-root uid/gid (10001) on debian:bookworm-slim: a libc for aws-lc-rs and
#   bash for the health check, nothing else (the webpki roots are compiled in, so no
#   ca-certificates package is needed).
# - Read-only root filesystem friendly: the only path written is the spool volume, which
#   mailveil keeps private (0700 directories, 0600 files, whatever the umask).
# - PID 1 is mailveil itself (exec-form ENTRYPOINT), so SIGTERM reaches it directly: it stops
#   accepting, finishes transactions in flight and exits within 25 s (set the orchestrator's
#   grace period above that, e.g. Kubernetes terminationGracePeriodSeconds: 40).
# - SIGHUP reloads the configuration (`docker kill -s HUP`); so does `mailveil ctl reload`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer, so editing the sources does not rebuild them.
# benches/ only because Cargo.toml declares a [[bench]] target, which cargo wants to find.
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
# Make sure cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip target/release/mailveil

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 mailveil \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/spool/mailveil --shell /usr/sbin/nologin mailveil \
 && mkdir -p /var/spool/mailveil /etc/mailveil \
 && chown 10001:10001 /var/spool/mailveil \
 && chmod 0700 /var/spool/mailveil
COPY --from=build /src/target/release/mailveil /usr/local/bin/mailveil
# A starting point; mount your own file over it (ConfigMap, bind mount).
COPY config/examples/sidecar.toml /etc/mailveil/mailveil.toml
USER 10001:10001
WORKDIR /var/spool/mailveil
VOLUME ["/var/spool/mailveil"]
# 2525 SMTP (the example config listens on loopback: sidecar use), 9725 metrics and probes,
# 9726 admin API (only served when the admin token variable is set).
EXPOSE 2525 9725 9726
ENV MAILVEIL_CONFIG=/etc/mailveil/mailveil.toml
STOPSIGNAL SIGTERM
# /healthz on the metrics listener, without adding curl to the image: bash's /dev/tcp.
# Kubernetes ignores HEALTHCHECK; use httpGet probes on /healthz and /readyz there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9725 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/mailveil"]
CMD ["run"]
