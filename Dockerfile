# syntax=docker/dockerfile:1.7
# One image with every orderflow binary (producer, consumer, orders-api,
# analytics, operator, loadgen); each Deployment picks its command.
# Dependencies are cached between builds by BuildKit cache mounts (the cargo
# registry and the target directory), so a source change rebuilds only the
# workspace crates.

FROM rust:1.89-bookworm AS build
WORKDIR /src
# mold is what .cargo/config.toml asks for on developer machines; the image
# build links with the default linker instead.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="" \
    CARGO_TERM_COLOR=never
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin producer --bin consumer --bin orders-api --bin analytics --bin operator --bin loadgen \
    && mkdir -p /out \
    && cp target/release/producer target/release/consumer target/release/orders-api \
          target/release/analytics target/release/operator target/release/loadgen /out/ \
    && strip /out/*

# Minimal runtime: glibc and CA certificates, no shell, non-root (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 3000 3001 3003 3010 8080
CMD ["producer"]
