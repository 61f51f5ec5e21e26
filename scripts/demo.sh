#!/usr/bin/env bash
# The demo: a real cutover on local PostgreSQL instances it starts itself — the seed's shared instance
# (four schemas) and one new instance per service — with the proxy in front. A small load of the
# onboarding service runs through the proxy while its route walks legacy → dual-legacy → dual-new, one step
# back and forward again; both sides are verified identical, the route goes to new, and then all the way back
# to legacy with nothing lost. The routes, the stalls and the divergences are printed at each step.
# Cleans up everything on exit.
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
CREATE TABLE onboarding.candidates (id serial PRIMARY KEY, partner_id int NOT NULL, name text NOT NULL, status text NOT NULL DEFAULT 'new',
    created_at timestamptz NOT NULL DEFAULT now(), token uuid NOT NULL DEFAULT gen_random_uuid(), updated_at timestamptz);
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
    echo "divergence_log = \"$WORK/divergences.jsonl\""
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
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" check-config --config "$WORK/cutover.toml"

echo "== starting cutover on 127.0.0.1:$PROXY_PORT"
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" serve --config "$WORK/cutover.toml" --log-level notice > "$WORK/cutover.log" 2>&1 &
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

export CUTOVER_ADMIN_URL="host=127.0.0.1 port=$PROXY_PORT dbname=cutover user=ops password=ops_pw"
status() { echo "-- cutover status --stats"; "$CUTOVER" status --stats | sed 's/^/   /'; }
step() { echo; echo "== $*"; }

step "a Profile 360 join from the onboarding service reaches into another service's schema: recorded as cross_schema"
via_proxy onboarding -c "SELECT c.name, p.name AS partner FROM candidates c JOIN public.partners p ON p.id = c.partner_id ORDER BY c.id LIMIT 2"

step "backfill: PAUSE the route, copy onboarding's schema to its new instance, verify, start mirroring, RESUME"
ONB_NEW() { PGPASSWORD=onboarding_secure_password psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORT[onboarding]}" -U onboarding_user onboarding "$@"; }
ONB_NEW -c "CREATE TABLE candidates (id serial PRIMARY KEY, partner_id int NOT NULL, name text NOT NULL, status text NOT NULL DEFAULT 'new',
    created_at timestamptz NOT NULL DEFAULT now(), token uuid NOT NULL DEFAULT gen_random_uuid(), updated_at timestamptz)"
"$CUTOVER" pause onboarding --timeout 10
echo "-- cutover backfill (legacy's schema onboarding, one snapshot, into the new instance; sequences too)"
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" backfill --config "$WORK/cutover.toml" onboarding | sed 's/^/   /'
verify() { echo "-- cutover verify (both sides, straight from the backends)"; LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" verify --config "$WORK/cutover.toml" onboarding "$@" | sed 's/^/   /'; }
verify
# Lock-step (sync) mirroring: the load below updates the same candidates from several clients at once, and
# only lock-step applies such conflicting writes in the leader's order on the follower too (docs/phases.md).
"$CUTOVER" phase onboarding dual-legacy --mirror sync
"$CUTOVER" resume onboarding

step "a row deleted on the new instance behind the proxy's back, then updated through the proxy: one divergence (UPDATE 1 vs UPDATE 0)"
ONB_NEW -c "DELETE FROM candidates WHERE id = 7"
via_proxy onboarding -c "UPDATE candidates SET status = 'hired' WHERE id = 7"
sleep 0.5
"$CUTOVER" divergences onboarding
verify --attempts 1 || echo "   (exit status 1: the sides differ)"
echo "   (repairing the new side: copying row 7 back)"
PGPASSWORD=hexabuilders_pw psql -X -q -h 127.0.0.1 -p "${PORT[legacy]}" -U hexabuilders hexabuilders \
    -c "\\copy (SELECT * FROM onboarding.candidates WHERE id = 7) TO STDOUT" | ONB_NEW -c "\\copy candidates FROM STDIN"
echo "   (that UPDATE changed row 7 on legacy only: the route is out of sync, and a leader flip would be refused)"
psql "$CUTOVER_ADMIN_URL" -X -c "SHOW ROUTES" | grep -E "route|onboarding" | cut -c1-160 | sed 's/^/   /'
echo "   (repaired, it is verified under a PAUSE and declared in sync: MARK IN SYNC names the pause the check ran under)"
"$CUTOVER" pause onboarding --timeout 10 | sed 's/^/   /'
verify --mark-in-sync
"$CUTOVER" resume onboarding | sed 's/^/   /'

step "a load of the onboarding service runs through the proxy (pgbench, 4 clients at 300 tx/s, 26 s) while the route walks the ladder"
echo "   (each transaction registers a candidate: serial id, created_at DEFAULT now(), token DEFAULT gen_random_uuid(),"
echo "    and moves another one on with updated_at = now(): values the proxy captures from the leader for the follower)"
cat > "$WORK/onboarding.sql" <<'SQL'
\set id random(1, 200)
\set partner random(1, 20)
BEGIN;
INSERT INTO candidates (partner_id, name) VALUES (:partner, 'walk-in');
UPDATE candidates SET status = CASE WHEN status = 'new' THEN 'screened' ELSE 'new' END, updated_at = now() WHERE id = :id;
SELECT id, status FROM candidates WHERE id = :id;
END;
SQL
PGPASSWORD=onboarding_client_pw pgbench -n -c 4 -j 2 -R 300 -T 26 -f "$WORK/onboarding.sql" -h 127.0.0.1 -p "$PROXY_PORT" \
    -U onboarding_user onboarding > "$WORK/pgbench.log" 2>&1 &
BENCH_PID=$!
sleep 3
status
for phase in dual-new dual-legacy dual-new; do
    if [[ $phase == dual-legacy ]]; then
        step "roll back one step to dual-legacy (legacy received every write: nothing is lost), under load"
    else
        step "flip onboarding to $phase (under load)"
    fi
    "$CUTOVER" phase onboarding "$phase" | sed 's/^/   /'
    sleep 4
    status
done
wait "$BENCH_PID" || true
step "the load, as the onboarding service saw it (no errors across the flips)"
grep -E "number of (transactions actually processed|failed)|latency average|tps" "$WORK/pgbench.log"

step "both sides after the load: the same rows, ids, created_at, tokens and updated_at (captured from the leader), in sync"
verify
psql "$CUTOVER_ADMIN_URL" -X -c "SHOW ROUTES" | grep -E "route|onboarding" | cut -c1-110 | sed 's/^/   /'

step "flip onboarding to new"
"$CUTOVER" phase onboarding new | sed 's/^/   /'

step "the new instance now serves onboarding; legacy's copy stopped at the flip to new"
via_proxy onboarding -c "SELECT current_database() AS real_database, current_schema() AS schema, count(*) AS candidates FROM candidates"
via_proxy onboarding -q -c "INSERT INTO candidates (partner_id, name) VALUES (3, 'registered in phase new')"

step "rollback from new to legacy, nothing lost: PAUSE, copy new → legacy, verify and MARK IN SYNC, then walk back"
"$CUTOVER" pause onboarding --timeout 10 | sed 's/^/   /'
LEGACY_DB_PASSWORD=hexabuilders_pw "$CUTOVER" backfill --config "$WORK/cutover.toml" onboarding --reverse | sed 's/^/   /'
verify --mark-in-sync
"$CUTOVER" phase onboarding dual-new | sed 's/^/   /'
"$CUTOVER" resume onboarding | sed 's/^/   /'
"$CUTOVER" phase onboarding dual-legacy | sed 's/^/   /'
verify
"$CUTOVER" phase onboarding legacy | sed 's/^/   /'
via_proxy onboarding -c "SELECT current_database() AS real_database, count(*) AS candidates, max(id) AS last_id FROM candidates"

step "divergences by kind, and the last records of the divergence log ($WORK/divergences.jsonl)"
python3 - "$WORK/divergences.jsonl" <<'PY'
import json, sys, collections
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for kind, n in sorted(collections.Counter(r["kind"] for r in records).items()):
    print(f"   {kind:20} {n}")
for r in records[-3:]:
    print("  ", json.dumps(r, sort_keys=True))
PY

step "final state"
status
echo
echo "== demo finished; stopping the proxy and the instances"
