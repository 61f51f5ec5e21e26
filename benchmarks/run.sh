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
# --skip throughput,tls,unix,copy,callgrind,idle,flip, --keep. --no-build uses the existing release binary;
# --ref REV builds that commit (exported with git archive) instead of the working tree, so edits in
# progress do not end up in the numbers.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmdline="$*"
repo=$(dirname "$here")
build=1
ref=""
args=()
while (($# > 0)); do
    a=$1
    shift
    case "$a" in
        --no-build) build=0 ;;
        --ref) ref=$1; shift ;;
        --ref=*) ref=${a#--ref=} ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exec python3 "$here/bench.py" --binary x --help ;;
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
src="$repo"
label=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$ref" ]]; then
    label=$(git -C "$repo" rev-parse --short "$ref")
    src="$scratch/src"                       # a clean export of $ref, built with its own scratch folder
    scratch="$scratch/ref"
    if ((build)); then
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$repo" archive --format=tar "$ref" | tar -x -C "$src"
        cp "$repo/Package.resolved" "$src/" 2>/dev/null || true
    fi
elif [[ -n $(git -C "$repo" status --porcelain -- Sources Package.swift 2>/dev/null) ]]; then
    label="$label + uncommitted changes in Sources"
fi
if ((build)); then
    start=$(date +%s)
    log="$scratch/build.log"
    mkdir -p "$scratch"
    if ! (cd "$src" && swift build -c release --product cutover --scratch-path "$scratch") >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "run.sh: release build failed (full log: $log)" >&2
        exit 1
    fi
    echo "run.sh: release build of cutover in $(( $(date +%s) - start )) s"
fi
binary="$scratch/release/cutover"
[[ -x "$binary" ]] || { echo "run.sh: no $binary (drop --no-build)" >&2; exit 1; }

exec python3 "$here/bench.py" --binary "$binary" --commit "$label" --command "benchmarks/run.sh${cmdline:+ $cmdline}" "${args[@]}"
