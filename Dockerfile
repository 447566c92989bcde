# One image with every baton binary; docker-compose.yml runs it as the
# server and as agents.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p baton-server -p baton-agent -p baton -p baton-demo

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/baton-server /src/target/release/baton-agent \
     /src/target/release/baton /src/target/release/baton-demo /usr/local/bin/
