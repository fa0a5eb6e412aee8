# syntax=docker/dockerfile:1
# Inference-PIO's server image, built with the README's set-up steps. Two stages:
#   build   — `scripts/install-system`, `cargo build --release --workspace`, then the default
#             model (SmolLM2-135M-Instruct Q4_1, fetched with pip) packed with the llama plugin
#             into a plugin folder under /opt/pio/plugins;
#   runtime — Debian slim with the Vulkan loader and Mesa's software Vulkan driver (lavapipe),
#             `pio`, the plugin libraries and that folder; runs as an unprivileged user.
# The same image runs on an NVIDIA GPU: the NVIDIA container toolkit adds the driver's Vulkan
# ICD when the container asks for the `graphics` capability (deploy/kubernetes/README.md).
#
#   docker build -t inference-pio:cpu .
#   docker run --rm -p 8080:8080 inference-pio:cpu

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# pip fetches the models (`pio models fetch`); the system packages are the README's first step.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/install-system scripts/install-system
RUN scripts/install-system
COPY . .
RUN cargo build --release --workspace --locked
RUN mkdir -p /opt/pio/bin \
    && cp target/release/pio target/release/pio-devices target/release/libpio_plugin_*.so /opt/pio/bin/
# The default model ships inside its plugin folder (`--model`), named relative to the folder.
RUN PIO_CACHE_DIR=/tmp/pio-cache target/release/pio models fetch smollm2-135m-instruct-q4_1 \
    && target/release/pio plugins pack target/release/libpio_plugin_llama.so \
         --out /opt/pio/plugins/llama \
         --model /tmp/pio-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
         --config '{"model": "SmolLM2-135M-Instruct.Q4_1.gguf"}' \
    && rm -rf /tmp/pio-cache

FROM debian:bookworm-slim AS runtime
COPY scripts/install-system /usr/local/share/pio/install-system
RUN /usr/local/share/pio/install-system --runtime && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/pio /opt/pio
RUN useradd --uid 10001 --user-group --create-home pio \
    && mkdir -p /var/cache/pio /srv/pio/plugins \
    && chown pio:pio /var/cache/pio /srv/pio/plugins
# PIO_CACHE_DIR holds the shadow copies of plugin libraries the host loads; XDG_CACHE_HOME,
# Mesa's shader cache. Both are volumes in deploy/kubernetes (the root filesystem is read-only).
ENV PATH=/opt/pio/bin:$PATH \
    PIO_CACHE_DIR=/var/cache/pio \
    XDG_CACHE_HOME=/var/cache/pio/xdg
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["pio"]
# Every interface (not PIO_ADDR, which would override the `addr` of a --config file).
CMD ["serve", "--plugins", "/opt/pio/plugins", "--addr", "0.0.0.0:8080"]
