"""The systems under test: two PostgreSQL clusters, PgBouncer instances and Cutover instances."""
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from . import procs

PG_BIN = "/usr/lib/postgresql/15/bin"
DB = "bench"
USER = "bench"
PASSWORD = "bench_pw"
ADMIN_USER = "bench_admin"


@dataclass
class Endpoint:
    """What a client needs to reach one target: direct PostgreSQL or a proxy in front of it."""
    key: str
    label: str
    port: int
    service: object = None          # the proxy's Service (for CPU and RSS), None for direct
    prepared_ok: bool = True        # PgBouncer 1.18 in transaction mode cannot keep prepared statements
    sslmode: str = None             # libpq's sslmode for this target's clients (the TLS targets: "require")
    host: str = "127.0.0.1"         # a directory: the target's Unix-domain socket (the Unix targets)

    @property
    def is_unix(self):
        return self.host.startswith("/")

    @property
    def proxy_pid(self):
        return self.service.pid if self.service is not None else None

    def env(self):
        e = dict(os.environ)
        e.update(PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="10", PGAPPNAME="cutover-bench")
        if self.sslmode:
            e["PGSSLMODE"] = self.sslmode
        return e

    def psql(self, *statements, user=USER, db=DB):
        """psql argv; each statement is its own `-c`, so each runs in its own transaction."""
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port), "-U", user, "-d", db]
        for sql in statements:
            argv += ["-c", sql]
        return argv


def make_certificate(root):
    """A throwaway self-signed server certificate and key for the TLS targets, readable by the PostgreSQL OS
    user (PgBouncer runs as it). Returns (certificate, key) paths."""
    d = os.path.join(root, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    procs.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"], log=os.path.join(d, "openssl.log"))
    os.chmod(key, 0o600)
    for p in (d, cert, key):
        procs.chown_to_pg(p)
    return cert, key


class Managed:
    """Something the harness runs as one `procs.Service` (set by `start`)."""
    service = None

    def stop(self, timeout=60.0):
        if self.service:
            self.service.stop(timeout)


class PostgresCluster(Managed):
    """A throwaway cluster in `root/<name>`, run as the PostgreSQL OS user, tuned for benchmarking not safety."""

    def __init__(self, root, name, pin, max_connections):
        self.name = name
        self.dir = os.path.join(root, name)
        self.data = os.path.join(self.dir, "data")
        self.port = procs.free_port()
        self.pin = pin
        self.max_connections = max_connections
        os.makedirs(self.dir, exist_ok=True)
        procs.chown_to_pg(self.dir)

    def init(self):
        log = os.path.join(self.dir, "initdb.log")
        procs.run(procs.as_pg_user([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                    "--locale=C", "--no-sync"]), log=log)
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host all postgres 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        procs.chown_to_pg(os.path.join(self.data, "pg_hba.conf"))

    def start(self):
        settings = {
            "listen_addresses": "127.0.0.1", "port": self.port, "unix_socket_directories": self.dir,
            "max_connections": self.max_connections, "shared_buffers": "256MB",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "checkpoint_timeout": "30min", "max_wal_size": "4GB", "logging_collector": "off",
            "log_min_messages": "warning", "password_encryption": "scram-sha-256",
        }
        argv = [f"{PG_BIN}/postgres", "-D", self.data]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        # Children (backends, checkpointer, ...) inherit the postmaster's CPU affinity.
        self.service = procs.Service(f"postgres-{self.name}", self.pin.wrap(procs.as_pg_user(argv)),
                                     os.path.join(self.dir, "postgres.log"), cwd=self.dir, stop_signal=signal.SIGINT)
        procs.wait_for_port(self.port, self.service.proc, what=f"postgres {self.name}")
        self.wait_accepting()

    def wait_accepting(self):
        for _ in range(200):
            if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres {self.name} is not accepting connections")

    def superuser_sql(self, sql, db="postgres"):
        procs.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                   "-d", db, "-c", sql], log=os.path.join(self.dir, "setup.log"))

    def create_bench_db(self, scale, pin):
        self.superuser_sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self.superuser_sql(f"CREATE DATABASE {DB} OWNER {USER}")
        ep = self.endpoint("direct", "direct")
        self.reset_bench_tables(scale, pin)
        procs.run(ep.psql("CREATE TABLE copy_target (LIKE pgbench_accounts)", "VACUUM ANALYZE"),
                  log=os.path.join(self.dir, "setup.log"), env=ep.env())

    def reset_bench_tables(self, scale, pin):
        """(Re)creates pgbench's tables: the same rows on every cluster, without the bloat of earlier runs."""
        ep = self.endpoint("direct", "direct")
        procs.run(pin.wrap(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DB]),
                  log=os.path.join(self.dir, "setup.log"), env=ep.env())

    def endpoint(self, key="direct", label="direct", unix=False):
        return Endpoint(key, label, self.port, host=self.dir if unix else "127.0.0.1")


class PgBouncer(Managed):
    """PgBouncer 1.18 from Debian in front of the legacy cluster. Clients log in with `auth_type = trust`,
    as they do at Cutover, so neither proxy spends client-side SCRAM in a measurement."""

    def __init__(self, root, name, legacy, pool_mode, pin, max_clients, pool_size, tls=None, unix=False):
        self.name = name
        self.dir = os.path.join(root, name)
        self.port = procs.free_port()
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "userlist.txt"), "w") as f:
            f.write(f'"{USER}" ""\n"{ADMIN_USER}" ""\n')
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(self.ini, "w") as f:
            f.write(f"""[databases]
{DB} = host={legacy.dir if unix else "127.0.0.1"} port={legacy.port} dbname={DB} user={USER} password={PASSWORD}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.dir if unix else ""}
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = {pool_mode}
max_client_conn = {max_clients}
default_pool_size = {pool_size}
max_db_connections = 0
logfile = {self.dir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
""")
            if tls:
                f.write(f"client_tls_sslmode = require\nclient_tls_cert_file = {tls[0]}\nclient_tls_key_file = {tls[1]}\n")
        for p in (self.dir, self.ini, os.path.join(self.dir, "userlist.txt")):
            procs.chown_to_pg(p)
        self.pin = pin

    def start(self, wrapper=(), signal_child=False):
        argv = list(wrapper) + ["/usr/sbin/pgbouncer", self.ini]
        self.service = procs.Service(self.name, self.pin.wrap(procs.as_pg_user(argv)),
                                     os.path.join(self.dir, "stdout.log"), cwd=self.dir, signal_child=signal_child)
        procs.wait_for_port(self.port, self.service.proc, timeout=60, what=self.name)
        return self


class Cutover(Managed):
    """One `cutover serve` instance with a route `bench` (legacy + new) in a given phase and mirror mode."""

    def __init__(self, root, name, binary, legacy, new, phase, mirror, pin, max_clients, tls=None, unix=False, extra_server=""):
        self.name = name
        self.binary = binary
        self.dir = os.path.join(root, name)
        self.port = procs.free_port()
        self.pin = pin
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "cutover.toml")
        with open(self.config, "w") as f:
            f.write(f"""# Written by benchmarks/harness/services.py
[server]
listen = "127.0.0.1:{self.port}"
max_clients = {max_clients}
state_file = "{self.dir}/state.json"
{f'unix_socket_dir = "{self.dir}"' if unix else ""}
{f'client_tls = "require"{chr(10)}client_tls_cert_file = "{tls[0]}"{chr(10)}client_tls_key_file = "{tls[1]}"' if tls else ""}
{extra_server}

[[users]]
name = "{USER}"
auth = "trust"

[[users]]
name = "{ADMIN_USER}"
auth = "trust"
admin = true

[backends.legacy]
host = "{legacy.dir if unix else "127.0.0.1"}"
port = {legacy.port}
database = "{DB}"
user = "{USER}"
password = "{PASSWORD}"

[backends.new]
host = "{new.dir if unix else "127.0.0.1"}"
port = {new.port}
database = "{DB}"
user = "{USER}"
password = "{PASSWORD}"

[routes.{DB}]
legacy = "legacy"
legacy_schema = "public"
new = "new"
phase = "{phase}"
mirror = "{mirror}"
""")

    def start(self, wrapper=(), signal_child=False):
        argv = list(wrapper) + [self.binary, "serve", "--config", self.config, "--log-level", "warning"]
        self.service = procs.Service(self.name, self.pin.wrap(argv), os.path.join(self.dir, "cutover.log"), cwd=self.dir,
                                     signal_child=signal_child)
        procs.wait_for_port(self.port, self.service.proc, timeout=60, what=self.name)
        return self
