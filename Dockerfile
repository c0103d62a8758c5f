# Build with the pinned toolchain, run as non-root on a small base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked && strip target/release/mailveil

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/spool/mailveil mailveil \
 && mkdir -p /var/spool/mailveil /etc/mailveil && chown mailveil /var/spool/mailveil
COPY --from=build /src/target/release/mailveil /usr/local/bin/mailveil
COPY config/examples/sidecar.toml /etc/mailveil/mailveil.toml
USER 10001
VOLUME ["/var/spool/mailveil"]
EXPOSE 2525 9725
ENV MAILVEIL_CONFIG=/etc/mailveil/mailveil.toml
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mailveil"]
CMD ["run"]
