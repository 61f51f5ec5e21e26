# Shell helpers for throwaway PostgreSQL clusters (sourced by the demo). PostgreSQL refuses to run as
# root, so as root every server command runs as the unprivileged `postgres` user through runuser.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# cluster_start DIR PORT SUPERUSER_PASSWORD: initdb (scram everywhere) and start on 127.0.0.1:PORT.
cluster_start() {
    local dir=$1 port=$2 pw=$3
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres "$dir"
    echo "$pw" > "$dir/pwfile"
    [[ $(id -u) -eq 0 ]] && chown postgres "$dir/pwfile"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pwfile" \
        --locale=C --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1
    cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
max_connections = 200
CONF
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

cluster_stop() {
    local dir=$1 mode=${2:-fast}
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m "$mode" -w stop >/dev/null 2>&1 || true
}
