#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test tier (codec, state machine,
# loopback runtime, integration against real PostgreSQL clusters it starts itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
swift build
# Integration suites share one proxy and measure its memory: run suites one after another.
swift test --no-parallel "$@"
