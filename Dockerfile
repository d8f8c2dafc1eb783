# One image with every Instaclone binary; compose picks the one each container runs.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/instaclone target/release/instaclone-gateway target/release/instaclone-auth \
       target/release/instaclone-users target/release/instaclone-posts \
       target/release/instaclone-notifications target/release/instaclone-realtime-hub /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 instaclone
COPY --from=build /out/ /usr/local/bin/
USER instaclone
ENV HOST=0.0.0.0 LOG_FORMAT=json
CMD ["instaclone"]
