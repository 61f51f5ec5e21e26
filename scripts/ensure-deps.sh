#!/usr/bin/env bash
# Installs what Cutover needs to build and test, if anything is missing: the C libraries (libuv,
# libpq, libpg_query, OpenSSL), the PostgreSQL server and client tools, pgbench, pgbouncer and
# python3, and ss (iproute2: a test reads sockets' keepalive timers). Idempotent: when everything is present it changes nothing. Prints one summary line.
set -euo pipefail

missing=()
for header in /usr/include/uv.h /usr/include/postgresql/libpq-fe.h /usr/include/pg_query.h /usr/include/openssl/ssl.h; do
    [[ -e "$header" ]] || missing+=("$header")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=("initdb")
for cmd in psql pgbench pgbouncer python3 openssl ss; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done

actions=()

if ((${#missing[@]} > 0)); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "ensure-deps: missing ${missing[*]}, and not root and no sudo to install them" >&2
            exit 1
        fi
    fi
    apt_log=$(mktemp /tmp/ensure-deps-apt.XXXXXX)
    export DEBIAN_FRONTEND=noninteractive
    if ! { "${sudo[@]}" apt-get update -qq &&
           "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
               libuv1-dev libpq-dev libpg-query-dev libssl-dev \
               postgresql postgresql-contrib postgresql-client pgbouncer python3 openssl iproute2; } >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        echo "ensure-deps: apt-get failed (missing: ${missing[*]})" >&2
        exit 1
    fi
    rm -f "$apt_log"
    actions+=("installed packages for: ${missing[*]}")

    # Debian starts the packaged services on install; the tests run their own servers, so keep
    # ports 5432/6432 free.
    for svc in postgresql pgbouncer; do
        if command -v service >/dev/null 2>&1; then
            "${sudo[@]}" service "$svc" stop >/dev/null 2>&1 || true
        fi
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif command -v update-rc.d >/dev/null 2>&1; then
            "${sudo[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    done
    actions+=("stopped/disabled system postgresql and pgbouncer services")
fi

# PostgreSQL refuses to run as root: the test harness runs servers as `postgres` (or `cutover-pg`).
if id -u postgres >/dev/null 2>&1; then
    pg_user=postgres
elif id -u cutover-pg >/dev/null 2>&1; then
    pg_user=cutover-pg
else
    sudo=()
    [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo=(sudo)
    "${sudo[@]}" useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cutover-pg
    pg_user=cutover-pg
    actions+=("created OS user cutover-pg")
fi

if ((${#actions[@]} == 0)); then
    echo "ensure-deps: all dependencies present, nothing to do (PostgreSQL OS user: $pg_user)"
else
    summary=$(IFS=';'; echo "${actions[*]}")
    echo "ensure-deps: ${summary//;/; } (PostgreSQL OS user: $pg_user)"
fi
