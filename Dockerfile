# syntax=docker/dockerfile:1
#
# defender-proxy container image.
#
#   docker build -t defender-proxy:dev .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/my-config.toml:/etc/defender-proxy/config.toml:ro" defender-proxy:dev
#   docker run --rm -v "$PWD/my-config.toml:/c.toml:ro" defender-proxy:dev config check --config /c.toml
#
# The built-in /etc/defender-proxy/config.toml is config/default.toml, which has no tenant, client
# or secret: mount a config (Kubernetes: deploy/base/config.toml as a ConfigMap) or set them with
# DPX_TOKEN__TENANT_ID, DPX_TOKEN__CLIENT_ID and DPX_TOKEN__CLIENT_SECRET_FILE.
# Two stages: a Rust builder and a distroless runtime (no shell, no package manager, glibc only).

# ---------------------------------------------------------------------------------------------
# Builder. The tag pins the Rust minor so a new toolchain never arrives with an unrelated change.
FROM rust:1.95-bookworm AS builder
# pipefail: the stub generator below pipes awk into a loop; a failing awk must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so editing src/ does not
# rebuild the ~300 crates. cargo-chef would do this, but it is not available offline.
# Cargo parses every target declared in Cargo.toml (benches, tests, examples) even when only
# the binary is built, so the awk below creates a stub for each declared target path as well
# as for src/lib.rs and src/main.rs. The workspace members (crates/odata, crates/simulator) get an
# empty src/lib.rs each.
COPY Cargo.toml Cargo.lock ./
COPY crates/odata/Cargo.toml crates/odata/
COPY crates/simulator/Cargo.toml crates/simulator/
RUN set -eu; \
    mkdir -p src crates/odata/src crates/simulator/src; \
    echo '' > src/lib.rs; \
    echo '' > crates/odata/src/lib.rs; \
    echo '' > crates/simulator/src/lib.rs; \
    echo 'fn main() {}' > src/main.rs; \
    awk ' \
      /^\[\[(bench|test|example|bin)\]\]/ { kind = $0; gsub(/[\[\]]/, "", kind); name = ""; path = ""; next } \
      /^\[/ { kind = ""; next } \
      kind != "" && /^name *=/ { name = $0; sub(/^[^"]*"/, "", name); sub(/".*$/, "", name); \
        if (kind == "bench") print "benches/" name ".rs"; \
        else if (kind == "test") print "tests/" name ".rs"; \
        else if (kind == "example") print "examples/" name ".rs"; } \
      kind != "" && /^path *=/ { p = $0; sub(/^[^"]*"/, "", p); sub(/".*$/, "", p); print p } \
    ' Cargo.toml | while read -r stub; do \
      mkdir -p "$(dirname "$stub")"; \
      [ -e "$stub" ] || echo 'fn main() {}' > "$stub"; \
    done; \
    cargo build --release --locked --bin defender-proxy; \
    rm -rf src benches tests examples crates/odata/src crates/simulator/src

# The real sources. touch makes sure cargo sees them as newer than the stub build artefacts
# (COPY keeps the build context's mtimes, which can be older).
COPY . .
RUN set -eu; \
    find src crates -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bin defender-proxy; \
    cp target/release/defender-proxy /usr/local/bin/defender-proxy

# ---------------------------------------------------------------------------------------------
# Runtime: distroless "cc" (glibc + libgcc + CA certificates), nonroot variant (uid/gid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="defender-proxy" \
      org.opencontainers.image.description="Caching, quota-exact proxy in front of the Microsoft 365 Defender incidents API" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /usr/local/bin/defender-proxy /usr/local/bin/defender-proxy
# The image default config; in Kubernetes a ConfigMap is mounted over this path.
COPY --from=builder /src/config/default.toml /etc/defender-proxy/config.toml

# Inside a container the listeners must bind all interfaces (the file defaults are loopback).
ENV DPX_SERVER__LISTEN=0.0.0.0:8080 \
    DPX_SERVER__ADMIN_LISTEN=0.0.0.0:9090

# Numeric so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532

# 8080: API for internal tools. 9090: admin (/metrics, /livez, /readyz).
EXPOSE 8080 9090

ENTRYPOINT ["/usr/local/bin/defender-proxy"]
CMD ["serve", "--config", "/etc/defender-proxy/config.toml"]
