#!/usr/bin/env bash
# The demo: a real cutover setup on local PostgreSQL instances it starts itself — the seed's shared
# instance (four schemas) and one new instance per service — with the proxy in front, and a
# service's queries going through it. Cleans up everything on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/lib/clusters.sh

scripts/ensure-deps.sh
echo "== building cutover (release)"
swift build -c release --product cutover 2>&1 | tail -1
CUTOVER="$ROOT/.build/release/cutover"

WORK=$(mktemp -d /tmp/cutover-demo.XXXXXX)
chmod 755 "$WORK"
PROXY_PID=""
cleanup() {
    [[ -n "$PROXY_PID" ]] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
    for d in "$WORK"/pg-*; do [[ -d "$d" ]] && cluster_stop "$d" immediate; done
    rm -rf "$WORK"
}
trap cleanup EXIT

export PGCONNECT_TIMEOUT=10
SERVICES=(partner_management onboarding recruitment campaign_management)
declare -A SCHEMA=([partner_management]=public [onboarding]=onboarding [recruitment]=recruitment [campaign_management]=campaign_management)
declare -A DBUSER=([partner_management]=partner_user [onboarding]=onboarding_user [recruitment]=recruitment_user [campaign_management]=campaign_user)
declare -A PORT

echo "== starting the shared (legacy) instance and four new instances"
PORT[legacy]=$(free_port)
cluster_start "$WORK/pg-legacy" "${PORT[legacy]}" legacy_admin_pw
for s in "${SERVICES[@]}"; do
    PORT[$s]=$(free_port)
    cluster_start "$WORK/pg-$s" "${PORT[$s]}" "${s}_admin_pw"
done

legacy_sql() { PGPASSWORD=legacy_admin_pw psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[legacy]}" -U postgres "$@"; }
legacy_sql -c "CREATE ROLE hexabuilders LOGIN PASSWORD 'hexabuilders_pw'" -c "CREATE DATABASE hexabuilders OWNER hexabuilders"
PGPASSWORD=hexabuilders_pw psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[legacy]}" -U hexabuilders hexabuilders <<'SQL'
CREATE TABLE public.partners (id serial PRIMARY KEY, name text NOT NULL, tier text NOT NULL DEFAULT 'standard');
CREATE SCHEMA onboarding;
CREATE TABLE onboarding.candidates (id serial PRIMARY KEY, partner_id int NOT NULL, name text NOT NULL, status text NOT NULL DEFAULT 'new');
CREATE SCHEMA recruitment;
CREATE TABLE recruitment.job_postings (id serial PRIMARY KEY, partner_id int NOT NULL, title text NOT NULL, openings int NOT NULL);
CREATE SCHEMA campaign_management;
CREATE TABLE campaign_management.campaigns (id serial PRIMARY KEY, partner_id int NOT NULL, name text NOT NULL, budget numeric NOT NULL);
INSERT INTO public.partners (name, tier) SELECT 'partner ' || g, CASE WHEN g % 3 = 0 THEN 'gold' ELSE 'standard' END FROM generate_series(1, 20) g;
INSERT INTO onboarding.candidates (partner_id, name) SELECT 1 + g % 20, 'candidate ' || g FROM generate_series(1, 200) g;
INSERT INTO recruitment.job_postings (partner_id, title, openings) SELECT 1 + g % 20, 'posting ' || g, 1 + g % 5 FROM generate_series(1, 60) g;
INSERT INTO campaign_management.campaigns (partner_id, name, budget) SELECT 1 + g % 20, 'campaign ' || g, 1000 * g FROM generate_series(1, 40) g;
SQL
for s in "${SERVICES[@]}"; do
    PGPASSWORD="${s}_admin_pw" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[$s]}" -U postgres \
        -c "CREATE ROLE ${DBUSER[$s]} LOGIN PASSWORD '${s}_secure_password'" -c "CREATE DATABASE $s OWNER ${DBUSER[$s]}"
done

echo "== writing the proxy config ($WORK/cutover.toml)"
PROXY_PORT=$(free_port)
{
    echo "[server]"
    echo "listen = \"127.0.0.1:$PROXY_PORT\""
    echo "state_file = \"$WORK/cutover.state\""
    echo
    for s in "${SERVICES[@]}"; do
        printf '[[users]]\nname = "%s"\npassword = "%s_client_pw"\n\n' "${DBUSER[$s]}" "$s"
    done
    printf '[[users]]\nname = "ops"\npassword = "ops_pw"\nadmin = true\n\n'
    printf '[backends.legacy]\nhost = "127.0.0.1"\nport = %s\ndatabase = "hexabuilders"\nuser = "hexabuilders"\npassword_env = "LEGACY_DB_PASSWORD"\n\n' "${PORT[legacy]}"
    for s in "${SERVICES[@]}"; do
        printf '[backends.%s]\nhost = "127.0.0.1"\nport = %s\ndatabase = "%s"\nuser = "%s"\npassword = "%s_secure_password"\n\n' \
            "$s" "${PORT[$s]}" "$s" "${DBUSER[$s]}" "$s"
    done
    for s in "${SERVICES[@]}"; do
        printf '[routes.%s]\nlegacy = "legacy"\nlegacy_schema = "%s"\nnew = "%s"\nphase = "legacy"\n\n' "$s" "${SCHEMA[$s]}" "$s"
    done
} > "$WORK/cutover.toml"
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" check-config "$WORK/cutover.toml"

echo "== starting cutover on 127.0.0.1:$PROXY_PORT"
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" serve "$WORK/cutover.toml" --log-level notice > "$WORK/cutover.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null && break; sleep 0.1; done

via_proxy() { local s=$1; shift; PGPASSWORD="${s}_client_pw" psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PROXY_PORT" -U "${DBUSER[$s]}" -d "$s" "$@"; }

echo
echo "== each service connects to the proxy with only its connection string changed:"
for s in "${SERVICES[@]}"; do
    echo "   postgresql://${DBUSER[$s]}:***@127.0.0.1:$PROXY_PORT/$s"
done
echo
echo "== the onboarding service's queries, through the proxy (route in phase legacy: the shared instance, schema onboarding)"
via_proxy onboarding -c "SELECT current_database() AS real_database, current_schema() AS schema, count(*) AS candidates FROM candidates"
via_proxy onboarding -c "UPDATE candidates SET status = 'interviewing' WHERE id <= 5" -c "SELECT status, count(*) FROM candidates GROUP BY status ORDER BY status"
via_proxy recruitment -c "SELECT current_schema() AS schema, sum(openings) AS open_positions FROM job_postings"
via_proxy partner_management -c "SELECT tier, count(*) FROM partners GROUP BY tier ORDER BY tier"

echo "== a short load of the onboarding service through the proxy (pgbench, 4 clients, 5 s)"
cat > "$WORK/onboarding.sql" <<'SQL'
\set id random(1, 200)
BEGIN;
UPDATE candidates SET status = CASE WHEN status = 'new' THEN 'screened' ELSE 'new' END WHERE id = :id;
SELECT id, status FROM candidates WHERE id = :id;
END;
SQL
PGPASSWORD=onboarding_client_pw pgbench -n -c 4 -j 2 -T 5 -f "$WORK/onboarding.sql" -h 127.0.0.1 -p "$PROXY_PORT" -U onboarding_user onboarding 2>&1 \
    | grep -E "number of (transactions actually processed|failed)|tps|latency average"

echo
echo "== proxy log"
cat "$WORK/cutover.log"
echo "== demo finished; stopping the proxy and the instances"
