#!/usr/bin/env bash
# Runtime benchmark: shoal's runtime API and CLI path against Debian's runc, same rootfs.
# Usage: bench/runtime.sh [N]   (as root; N runs per path, default 100)
# NO_RM=1 times API containers that are not --rm (their overlay syncs the upper layer at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v runc >/dev/null || { apt-get update -qq && apt-get install -y -qq runc; }
[ -x /bin/busybox ] || { apt-get update -qq && apt-get install -y -qq busybox-static; }
cargo build --release --locked --bins
N="${1:-100}" exec target/release/runtime-bench
