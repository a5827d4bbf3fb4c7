# pbsq worker image.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/pbsq ./cmd/pbsq

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pbsq /usr/local/bin/pbsq
RUN useradd --system --home /var/lib/pbsq pbsq && mkdir -p /run/pbsq/locks /etc/pbsq && chown pbsq /run/pbsq/locks
USER pbsq
EXPOSE 9464
ENTRYPOINT []
CMD ["pbsq", "worker"]
