#!/usr/bin/env bash
# Installs what the tests and benchmarks need, idempotently, with pinned
# versions: Debian packages (redis-server, prometheus/promtool, rclone,
# zstd, util-linux) and Go tools (staticcheck, versitygw). Safe to run
# repeatedly; fast when done.
set -euo pipefail

STATICCHECK_VERSION=v0.8.2 # 2026.2.2
VERSITYGW_VERSION=v1.8.0
# Debian bookworm versions these were tested with (major.minor checked).
REDIS_SERIES=7.0
PROMETHEUS_SERIES=2.42
RCLONE_SERIES=1.60

gobin="$(go env GOPATH)/bin"
mkdir -p "$gobin"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v rclone >/dev/null || need_apt+=(rclone)
command -v zstd >/dev/null || need_apt+=(zstd)
# flock(1) holds PBS's manifest lock in the beside-PBS tests (essential on
# Debian, but not on every minimal image).
command -v flock >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	echo "deps: apt-get install ${need_apt[*]}"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
	# prometheus' package starts a service we don't want; ignore if absent.
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
check_series() { # name version-output series
	case "$2" in *"$3"*) ;; *) echo "deps: warning: $1 is not $3.x: $2" >&2 ;; esac
}
check_series redis-server "$(redis-server --version)" "v=$REDIS_SERIES"
check_series promtool "$(promtool --version 2>&1 | head -1)" "$PROMETHEUS_SERIES"
check_series rclone "$(rclone version 2>/dev/null | head -1)" "$RCLONE_SERIES"

stamp="$gobin/.pbsq-tools"
want="staticcheck=$STATICCHECK_VERSION versitygw=$VERSITYGW_VERSION"
if [ ! -x "$gobin/staticcheck" ] || [ ! -x "$gobin/versitygw" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "deps: go install staticcheck@$STATICCHECK_VERSION versitygw@$VERSITYGW_VERSION"
	(cd /tmp && GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION")
	(cd /tmp && GOFLAGS= go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION")
	echo "$want" >"$stamp"
fi
