# mailveil container image.
#
#   docker build -t mailveil:0.1.0 .
#   docker run --read-only -v mailveil-spool:/var/spool/mailveil \
#     -v $PWD/mailveil.toml:/etc/mailveil/mailveil.toml:ro -e UPSTREAM_PASSWORD=... mailveil:0.1.0
#
# - Built with the pinned toolchain (rust 1.95), `--locked` against Cargo.lock.
# - Runs as a fixed non-root uid/gid (10001) on debian:bookworm-slim: a libc for aws-lc-rs,
#   nothing else (the health check is the binary itself, `mailveil ctl health`; the webpki
#   roots are compiled in, so no ca-certificates package is needed).
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
# 2525 SMTP (the example config listens on loopback: sidecar use), 9725 metrics and probes.
# The admin API (9726) is not exposed: it listens on loopback only, for `mailveil ctl` inside
# the container (`docker exec` / `kubectl exec`).
EXPOSE 2525 9725
ENV MAILVEIL_CONFIG=/etc/mailveil/mailveil.toml
STOPSIGNAL SIGTERM
# `mailveil ctl health` reads the config (MAILVEIL_CONFIG, as `run` does) and probes what it
# finds there: /readyz on [metrics] listen, else the SMTP greeting on [server] listen (metrics
# are off by default), on loopback for a wildcard address. Exit 0 healthy, 1 not, with a
# one-line reason that `docker inspect` shows. Its own timeout (3 s) is below --timeout so the
# reason is printed. Kubernetes ignores HEALTHCHECK; the manifests under deploy/ use probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/mailveil", "ctl", "health"]
ENTRYPOINT ["/usr/local/bin/mailveil"]
CMD ["run"]
