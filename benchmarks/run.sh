#!/usr/bin/env bash
# Cutover's benchmark harness, one command: installs what it needs, builds Cutover (release) into
# .build-bench, creates a legacy and a new PostgreSQL cluster, starts PgBouncer (session and transaction
# mode) and Cutover, runs every workload in ABBA rounds and writes benchmarks/results/<timestamp>-<mode>/.
# The last line printed is `summary: key=value ...`.
#
#   benchmarks/run.sh --quick      # every workload, short: under 5 minutes
#   benchmarks/run.sh              # full: about 30 minutes
#
# Other options (passed to benchmarks/bench.py): --rounds N, --duration S, --cpu N, --no-pin,
# --skip throughput,copy,callgrind,idle,flip, --keep. --no-build uses the existing release binary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
build=1
args=()
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exec python3 "$here/bench.py" --binary x --help ;;
        *) args+=("$a") ;;
    esac
done

"$repo/scripts/ensure-deps.sh"
# The harness's own needs beyond the project's: valgrind (callgrind) and numpy.
bench_pkgs=()
command -v valgrind >/dev/null 2>&1 || bench_pkgs+=(valgrind)
python3 -c 'import numpy' 2>/dev/null || bench_pkgs+=(python3-numpy)
if ((${#bench_pkgs[@]} > 0)); then
    sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${bench_pkgs[@]}" >/dev/null
    echo "run.sh: installed ${bench_pkgs[*]}"
fi

scratch="$repo/.build-bench"
if ((build)); then
    start=$(date +%s)
    log="$scratch/build.log"
    mkdir -p "$scratch"
    if ! (cd "$repo" && swift build -c release --product cutover --scratch-path "$scratch") >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "run.sh: release build failed (full log: $log)" >&2
        exit 1
    fi
    echo "run.sh: release build of cutover in $(( $(date +%s) - start )) s"
fi
binary="$scratch/release/cutover"
[[ -x "$binary" ]] || { echo "run.sh: no $binary (drop --no-build)" >&2; exit 1; }

exec python3 "$here/bench.py" --binary "$binary" --command "benchmarks/run.sh${*:+ $*}" "${args[@]}"
