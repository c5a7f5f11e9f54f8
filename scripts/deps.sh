#!/usr/bin/env bash
# Installs what obdvol's tests, demo and benchmarks need, only when missing.
#   scripts/deps.sh          tools for make test / make demo
#   scripts/deps.sh bench    also the benchmark peers
set -euo pipefail

need_pkgs=()
want() { # want COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
want mke2fs e2fsprogs
want qemu-img qemu-utils
want docker-registry docker-registry
want skopeo skopeo
want sha256sum coreutils
want curl curl
want qemu-io qemu-utils
want nbdinfo libnbd-bin
want fio fio
want qemu-system-x86_64 qemu-system-x86
want busybox busybox-static
want cpio cpio
want strace strace
want xz xz-utils
if [ "${1:-}" = bench ]; then
	want nbdkit nbdkit
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "deps: installing ${need_pkgs[*]}" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq >/dev/null
	$SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The linter: staticcheck, built from the Go module proxy.
GOBIN_DIR="$(go env GOPATH)/bin"
if ! [ -x "$GOBIN_DIR/staticcheck" ]; then
	echo "deps: installing staticcheck" >&2
	go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
