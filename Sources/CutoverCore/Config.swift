// The configuration model: server settings, users, backends and routes, validated as a whole.

/// Everything `cutover serve` runs with. Immutable: a reload builds a new one and swaps it in.
public struct CutoverConfig: Sendable {
    public var server: ServerConfig
    public var users: [String: UserConfig]
    public var backends: [String: BackendConfig]
    public var routes: [String: RouteConfig]
    /// `[routes."*"]`: any other database name goes to the same-named database on this backend.
    public var wildcardBackend: String?

    public init(server: ServerConfig = ServerConfig(), users: [String: UserConfig] = [:],
                backends: [String: BackendConfig] = [:], routes: [String: RouteConfig] = [:], wildcardBackend: String? = nil) {
        self.server = server; self.users = users; self.backends = backends; self.routes = routes
        self.wildcardBackend = wildcardBackend
    }
}

public struct ServerConfig: Sendable, Equatable {
    public var listenHost = "127.0.0.1"
    public var listenPort = 6432
    public var maxClients = 1000
    /// Largest message a client may send, in bytes; a longer length prefix is refused before its body is read.
    public var maxMessageSize = 64 << 20
    /// Seconds to connect and log in to a backend.
    public var connectTimeout = 5.0
    /// Seconds a client may take from connecting to finishing authentication.
    public var authTimeout = 30.0
    /// Seconds a session may sit idle (outside a transaction) before it is closed; 0 disables.
    public var clientIdleTimeout = 0.0
    /// Seconds a session may sit idle inside a transaction (waiting for its client) before it is closed and
    /// the transaction rolled back; 0 disables. Such a session holds locks and holds up a leader flip.
    public var idleTransactionTimeout = 0.0
    /// Seconds SIGTERM waits for sessions to finish before closing them.
    public var shutdownTimeout = 30.0
    /// Bytes queued toward a slow reader before the proxy stops reading the other side.
    public var writeHighWater = 256 << 10
    public var adminDatabase = "cutover"
    /// Where route phases are persisted; nil keeps them in memory only.
    public var stateFile: String? = nil
    /// JSON-lines file of divergence records; nil logs them only to memory (SHOW DIVERGENCES) and the log.
    public var divergenceLog: String? = nil
    /// Log raw statement text (with literal values) instead of normalized text.
    public var logLiterals = false
    /// Divergence records kept in memory for SHOW DIVERGENCES.
    public var divergenceMemory = 1000
    /// Divergence records a second for one route, kind and statement fingerprint (0: every one).
    public var divergenceLogLimit = 10
    /// Per-session bound on bytes queued toward a follower (async mode); past it the session stops mirroring.
    public var mirrorQueueBytes = 16 << 20
    /// Per-session bound on statements awaiting the follower's answer.
    public var mirrorQueueStatements = 10_000
    /// Seconds a follower may take to answer a statement before the session degrades to out of sync.
    public var followerTimeout = 5.0
    /// Seconds a leader flip may wait for in-flight transactions before it aborts.
    public var flipTimeout = 5.0
    /// Follower logins (a forked backend and an authentication each) in flight at once, proxy-wide.
    public var followerLogins = 2
    /// Seconds before a backend host name's addresses are looked up again when a connection needs them
    /// (0: only at load and after a failed connection).
    public var dnsRefresh = 30.0
    /// Idle logged-in backend connections kept per login (backend, side and startup packet) when their
    /// session ends, for the next session that logs in the same way; 0: none (every session logs in).
    public var backendPoolSize = 0
    /// Idle backend connections kept in all (the oldest is ended past it).
    public var backendPoolTotal = 100
    /// Seconds an idle backend connection is kept in that pool (0: no limit).
    public var backendIdleTimeout = 60.0
    /// Seconds after its login a backend connection may still go back to that pool (0: no limit).
    public var backendLifetime = 3600.0
    /// A directory for a Unix-domain socket beside the TCP listener, `.s.PGSQL.<port>` as PostgreSQL names
    /// it (so `psql -h DIR -p PORT` finds it); nil: TCP only.
    public var unixSocketDirectory: String? = nil
    /// Where the HTTP endpoint for Prometheus (`/metrics`) and Kubernetes probes (`/healthz`, `/readyz`)
    /// listens; nil: no endpoint.
    public var metricsHost: String? = nil
    public var metricsPort = 0
    /// TLS toward clients, and the server certificate (PEM; the file may hold the chain) and key it uses.
    public var clientTLS = ClientTLSMode.disable
    public var clientTLSCertificateFile: String? = nil
    public var clientTLSKeyFile: String? = nil
    /// CA certificates client certificates must chain to (`auth = "cert"` users need one); nil: none asked for.
    public var clientTLSCAFile: String? = nil
    /// Certificate revocation lists for those CAs (PEM); nil: no revocation check.
    public var clientTLSCRLFile: String? = nil
    /// TCP keepalive on client and backend sockets, and its timings (seconds; 0: the kernel's default).
    public var tcpKeepalive = true
    public var tcpKeepidle = 0
    public var tcpKeepintvl = 0
    public var tcpKeepcnt = 0
    /// Milliseconds sent data may stay unacknowledged before the connection is dropped (0: the kernel's default).
    public var tcpUserTimeout = 0
    public init() {}
}

/// Whether the proxy encrypts its connections to a backend, and what it checks (libpq's `sslmode` values).
public enum BackendTLSMode: String, Sendable, Equatable {
    /// Clear text; no SSLRequest is sent.
    case disable
    /// TLS if the server offers it, else clear text (libpq's default). The server is not verified.
    case prefer
    /// TLS or no connection. The server is not verified.
    case require
    /// TLS, and the server's certificate must chain to `tls_ca_file`.
    case verifyCA = "verify-ca"
    /// As verify-ca, and the certificate must name the backend's `host`.
    case verifyFull = "verify-full"

    public var verifies: Bool { self == .verifyCA || self == .verifyFull }
}

/// Whether clients may or must encrypt their connection to the proxy.
public enum ClientTLSMode: String, Sendable, Equatable {
    /// SSLRequest is answered `N`: clients continue in clear text (libpq's default `sslmode=prefer` does).
    case disable
    /// SSLRequest is answered `S` and TLS starts; clients that do not ask are served in clear text.
    case allow
    /// As `allow`, and a client that starts without TLS is refused (28000).
    case require
}

/// How a user proves who they are to the proxy.
/// `cert`: a TLS client certificate that verifies against `[server] client_tls_ca_file` and whose subject
/// common name is the user name (PostgreSQL's `cert` method); no password.
public enum AuthMethod: String, Sendable, Equatable { case scramSHA256 = "scram-sha-256", md5, trust, cert }

public struct UserConfig: Sendable, Equatable {
    public var name: String
    public var auth: AuthMethod
    /// Kept only as derived forms: a SCRAM verifier and, when a plaintext is known, the md5 stored form.
    public var scram: SCRAMVerifier?
    public var md5: String?
    public var admin: Bool
    /// The routes (by name; `*` for the wildcard route) this user may use; nil: every route.
    public var routes: Set<String>?

    /// The SCRAM verifier was derived here from the plaintext password (with a random salt), not configured.
    public var scramFromPassword = false

    public init(name: String, auth: AuthMethod = .scramSHA256, password: String?, scram: SCRAMVerifier? = nil, admin: Bool = false) {
        self.name = name; self.auth = auth; self.admin = admin
        scramFromPassword = scram == nil && password != nil
        self.scram = scram ?? password.map { SCRAMVerifier(password: $0) }
        self.md5 = password.map { MD5Password.stored(user: name, password: $0) }
    }
}

public struct BackendConfig: Sendable, Equatable {
    public var name: String
    public var host: String
    public var port: Int
    public var database: String
    public var user: String
    /// Resolved from `password`, `password_env` or `password_file`; never logged.
    public var password: String?
    /// TLS toward this backend, as libpq's `sslmode`; `tlsCAFile` is what verify-ca / verify-full trust.
    public var tls = BackendTLSMode.prefer
    public var tlsCAFile: String? = nil

    public init(name: String, host: String, port: Int, database: String, user: String, password: String?) {
        self.name = name; self.host = host; self.port = port; self.database = database; self.user = user
        self.password = password
    }

    /// Where this backend's data lives: two backends with the same endpoint are one database.
    public var endpoint: String { "\(host):\(port)/\(database)" }

    /// A `host` that starts with `/` is the directory of the server's Unix-domain socket, as in libpq.
    public var isUnixSocket: Bool { host.hasPrefix("/") }
    /// The socket file of a Unix-domain backend.
    public var socketPath: String { PostgresSocket.path(directory: host, port: port) }
}

/// PostgreSQL's name for a Unix-domain socket: `<directory>/.s.PGSQL.<port>`.
public enum PostgresSocket {
    public static func path(directory: String, port: Int) -> String {
        (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/.s.PGSQL.\(port)"
    }
}

public struct RouteConfig: Sendable, Equatable {
    public var name: String
    public var legacy: String
    public var legacySchema: String?
    public var new: String
    /// Where the route's tables live on the new side (`new_schema`, default `public`).
    public var newSchema: String
    public var phase: Phase
    public var mirror: MirrorMode

    public init(name: String, legacy: String, legacySchema: String?, new: String, newSchema: String = "public",
                phase: Phase = .legacy, mirror: MirrorMode = .async) {
        self.name = name; self.legacy = legacy; self.legacySchema = legacySchema; self.new = new; self.newSchema = newSchema
        self.phase = phase; self.mirror = mirror
    }

    /// The `search_path` startup parameter a connection to `side` gets: the legacy schema there; on the new
    /// side `new_schema`, except `public`, which a database finds by itself (so the backend user's own
    /// `search_path` setting, if any, is left alone, as it was before `new_schema` existed).
    public func searchPath(on side: Side) -> String? {
        switch side {
        case .legacy: legacySchema
        case .new: newSchema == "public" ? nil : newSchema
        }
    }
}

/// One problem in a config file, with the key it concerns.
public struct ConfigProblem: Error, Equatable, Sendable, CustomStringConvertible {
    public var key: String
    public var message: String
    public init(_ key: String, _ message: String) { self.key = key; self.message = message }
    public var description: String { "\(key): \(message)" }
}

/// All the problems found in one file; `check-config` prints each on its own line.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
