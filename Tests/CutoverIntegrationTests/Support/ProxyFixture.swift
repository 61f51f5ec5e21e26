// Test support: the sample deployment in miniature — a legacy cluster with the seed's four schemas, a new
// onboarding cluster, and a `cutover serve` process in front of them — shared by the integration suites.
import Foundation
import Glibc

/// Passwords of the fixture. Clients log in to the proxy with `clientPassword`; the proxy logs in to
/// the backends with their own credentials.
enum FixtureSecrets {
    static let clientPassword = "client_pw"
    static let legacyPassword = "legacy_pw"
    static let onboardingPassword = "onboarding_db_pw"
    static let recruitmentPassword = "recruitment_db_pw"
    static let adminPassword = "ops_pw"
}

final class ProxyFixture: @unchecked Sendable {
    let legacy: PostgresCluster
    let onboarding: PostgresCluster
    let proxyPort: Int
    let configPath: String
    let logPath: String
    let directory: String
    private(set) var proxy: Process

    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var cutoverBinary: String {
        ProcessInfo.processInfo.environment["CUTOVER_BIN"] ?? "\(repositoryRoot)/.build/debug/cutover"
    }

    /// One fixture per test process; clusters are stopped at exit.
    nonisolated(unsafe) private static var instance: Result<ProxyFixture, Error>?
    private static let lock = NSLock()

    static func shared() throws -> ProxyFixture {
        lock.lock()
        defer { lock.unlock() }
        if instance == nil {
            instance = Result { try ProxyFixture() }
            atexit { ProxyFixture.tearDownShared() }
        }
        return try instance!.get()
    }

    static func tearDownShared() {
        if case .success(let f)? = instance { f.tearDown() }
    }

    private init() throws {
        legacy = try PostgresCluster.start(name: "legacy")
        onboarding = try PostgresCluster.start(name: "onboarding")
        try legacy.psql("ALTER SYSTEM SET max_connections = 2300")
        try legacy.psql("ALTER SYSTEM SET shared_buffers = '64MB'")
        legacy.stop()
        try legacy.restart()
        try legacy.createRole(name: "hexabuilders", password: FixtureSecrets.legacyPassword)
        try legacy.createDatabase(name: "hexabuilders", owner: "hexabuilders")
        try legacy.psql("""
            CREATE SCHEMA onboarding; CREATE SCHEMA recruitment; CREATE SCHEMA campaign_management;
            CREATE TABLE onboarding.candidates (id serial PRIMARY KEY, name text NOT NULL, v bigint NOT NULL DEFAULT 0);
            INSERT INTO onboarding.candidates (name) SELECT 'candidate ' || g FROM generate_series(1, 10) g;
            GRANT ALL ON ALL TABLES IN SCHEMA onboarding TO hexabuilders;
            """, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        try onboarding.createRole(name: "onboarding_user", password: FixtureSecrets.onboardingPassword)
        try onboarding.createDatabase(name: "onboarding", owner: "onboarding_user")
        // The recruitment service's new database lives on the same new cluster; its route is the one the
        // dual-write tests flip.
        try onboarding.createRole(name: "recruitment_user", password: FixtureSecrets.recruitmentPassword)
        try onboarding.createDatabase(name: "recruitment", owner: "recruitment_user")

        directory = legacy.baseDirectory
        configPath = "\(directory)/cutover.toml"
        logPath = "\(directory)/cutover.log"
        proxyPort = PostgresCluster.freePort()
        let config = """
            [server]
            listen = "127.0.0.1:\(proxyPort)"
            max_clients = 2500
            max_message_size = 67108864
            shutdown_timeout = 5
            state_file = "cutover.state"
            divergence_log = "divergences.jsonl"
            follower_timeout = 3
            [[users]]
            name = "onboarding_user"
            password = "\(FixtureSecrets.clientPassword)"
            [[users]]
            name = "md5_user"
            auth = "md5"
            password = "\(FixtureSecrets.clientPassword)"
            [[users]]
            name = "trust_user"
            auth = "trust"
            [[users]]
            name = "ops"
            password = "\(FixtureSecrets.adminPassword)"
            admin = true
            [[users]]
            name = "recruitment_user"
            password = "\(FixtureSecrets.clientPassword)"
            [backends.legacy]
            host = "127.0.0.1"
            port = \(legacy.port)
            database = "hexabuilders"
            user = "hexabuilders"
            password_env = "LEGACY_DB_PASSWORD"
            [backends.onboarding]
            host = "localhost"
            port = \(onboarding.port)
            database = "onboarding"
            user = "onboarding_user"
            password_env = "ONBOARDING_DB_PASSWORD"
            [backends.recruitment_new]
            port = \(onboarding.port)
            database = "recruitment"
            user = "recruitment_user"
            password = "\(FixtureSecrets.recruitmentPassword)"
            [routes.recruitment]
            legacy = "legacy"
            legacy_schema = "recruitment"
            new = "recruitment_new"
            phase = "legacy"
            [routes.onboarding]
            legacy = "legacy"
            legacy_schema = "onboarding"
            new = "onboarding"
            phase = "legacy"
            [routes.onboarding_new]
            legacy = "legacy"
            legacy_schema = "onboarding"
            new = "onboarding"
            phase = "new"
            [routes."*"]
            backend = "legacy"
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        proxy = try Self.startProxy(configPath: configPath, logPath: logPath, port: proxyPort)
    }

    static let proxyEnvironment = ["LEGACY_DB_PASSWORD": FixtureSecrets.legacyPassword,
                                   "ONBOARDING_DB_PASSWORD": FixtureSecrets.onboardingPassword]

    /// `fileLimit`: the proxy runs with that many file descriptors at most (soft and hard limit).
    /// `hostsFile`: the proxy sees that file as its /etc/hosts (a bind mount in a mount namespace of its own:
    /// root only, see `canOverrideHosts`); edited in place, it changes what the proxy's lookups answer.
    /// `resolvConf`: likewise its /etc/resolv.conf (with `hostsFile` only), e.g. a name server that never answers.
    static func startProxy(configPath: String, logPath: String, port: Int, fileLimit: Int? = nil, hostsFile: String? = nil,
                           resolvConf: String? = nil) throws -> Process {
        let serve = ["serve", "--config", configPath, "--log-level", "info"]
        let p: Process
        if let fileLimit {
            p = try startBackgroundProcess("/bin/sh", ["-c", "ulimit -n \(fileLimit) && exec \"$0\" \"$@\"", cutoverBinary] + serve,
                                           environment: proxyEnvironment, logPath: logPath)
        } else if let hostsFile {
            let resolv = resolvConf.map { "mount --bind \"\($0)\" /etc/resolv.conf && " } ?? ""
            p = try startBackgroundProcess("/usr/bin/unshare", ["-m", "/bin/sh", "-c", "mount --bind \"$0\" /etc/hosts && \(resolv)exec \"$@\"",
                                                                hostsFile, cutoverBinary] + serve,
                                           environment: proxyEnvironment, logPath: logPath)
        } else {
            p = try startBackgroundProcess(cutoverBinary, serve, environment: proxyEnvironment, logPath: logPath)
        }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let c = try? RawClient(port: port) { _ = c; return p }
            if !p.isRunning { break }
            usleep(50_000)
        }
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw PostgresClusterError("proxy did not start listening on \(port):\n\(log)")
    }

    func restartProxy() throws {
        stopBackgroundProcess(proxy)
        proxy = try Self.startProxy(configPath: configPath, logPath: logPath, port: proxyPort)
    }

    func tearDown() {
        stopBackgroundProcess(proxy, timeout: 5)
        legacy.destroy()
        onboarding.destroy()
    }

    /// The admin user `ops`, for configs of a test's own.
    static let adminTOML = """
        [[users]]
        name = "ops"
        password = "\(FixtureSecrets.adminPassword)"
        admin = true
        """

    /// A route `name` in `dual-legacy` for a config of a test's own: the recruitment schema on legacy leads,
    /// backend `newside` (the recruitment database on the new cluster, at `newHost` if given) follows.
    func dualLegacyRouteTOML(_ name: String, newHost: String? = nil) -> String {
        """
        [backends.newside]
        \(newHost.map { "host = \"\($0)\"" } ?? "")
        port = \(onboarding.port)
        database = "recruitment"
        user = "recruitment_user"
        password = "\(FixtureSecrets.recruitmentPassword)"
        [routes.\(name)]
        legacy = "legacy"
        legacy_schema = "recruitment"
        new = "newside"
        phase = "dual-legacy"
        """
    }

    /// `[backends.legacy]`: the shared instance's database as its owner, for configs of a test's own.
    var legacyBackendTOML: String { backendTOML("legacy") }

    /// `[backends.NAME]` on the legacy cluster's shared database (its owner by default; `host`: how to reach it).
    func backendTOML(_ name: String, host: String? = nil, user: String = "hexabuilders",
                     password: String = FixtureSecrets.legacyPassword) -> String {
        """
        [backends.\(name)]
        \(host.map { "host = \"\($0)\"" } ?? "")
        port = \(legacy.port)
        database = "hexabuilders"
        user = "\(user)"
        password = "\(password)"
        """
    }

    /// The config of a proxy of a test's own in front of the legacy cluster, listening on `port`: route
    /// `onboarding`, user `onboarding_user`, `extraServer` lines in [server] and `rest` at the end.
    func ownConfig(port: Int, server extraServer: String = "", rest: String = "", legacyHost: String? = nil) -> String {
        """
        [server]
        listen = "127.0.0.1:\(port)"
        \(extraServer)
        [[users]]
        name = "onboarding_user"
        password = "\(FixtureSecrets.clientPassword)"
        \(backendTOML("legacy", host: legacyHost))
        [routes.onboarding]
        legacy = "legacy"
        legacy_schema = "onboarding"
        new = "legacy"
        \(rest)
        """
    }

    /// Starts a proxy of a test's own with `ownConfig`. Returns the process, its port and its config file.
    func ownProxy(_ name: String, server extraServer: String = "", rest: String = "", legacyHost: String? = nil, fileLimit: Int? = nil,
                  hostsFile: String? = nil, resolvConf: String? = nil) throws -> (Process, Int, String) {
        let port = PostgresCluster.freePort()
        let path = "\(directory)/\(name).toml"
        try ownConfig(port: port, server: extraServer, rest: rest, legacyHost: legacyHost).write(toFile: path, atomically: true, encoding: .utf8)
        let p = try ProxyFixture.startProxy(configPath: path, logPath: "\(directory)/\(name).log", port: port, fileLimit: fileLimit,
                                            hostsFile: hostsFile, resolvConf: resolvConf)
        return (p, port, path)
    }

    /// A config for the offline commands (`verify`, `backfill`): route `route` from the legacy cluster's
    /// `legacySchema` to `newDatabase` on the onboarding cluster, plus `extra` lines (in the route's table
    /// first). With `proxyPort`, a proxy can serve it too: it listens there and has the admin user `ops`.
    /// Returns its path.
    func offlineConfig(_ route: String, legacySchema: String, newDatabase: String, extra: String = "", proxyPort: Int? = nil) throws -> String {
        let path = "\(directory)/\(route)-offline.toml"
        try """
            \(proxyPort.map { "[server]\nlisten = \"127.0.0.1:\($0)\"\n\(Self.adminTOML)" } ?? "")
            [[users]]
            name = "u"
            auth = "trust"
            \(legacyBackendTOML)
            [backends.new]
            port = \(onboarding.port)
            database = "\(newDatabase)"
            user = "onboarding_user"
            password_env = "ONBOARDING_DB_PASSWORD"
            [routes.\(route)]
            legacy_schema = "\(legacySchema)"
            legacy = "legacy"
            new = "new"
            \(extra)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Starts a proxy serving a config from `offlineConfig(..., proxyPort: port)`; returns its admin console's URL.
    func serveOffline(_ path: String, port: Int) throws -> (Process, adminURL: String) {
        let p = try Self.startProxy(configPath: path, logPath: path.replacingOccurrences(of: ".toml", with: ".log"), port: port)
        return (p, "host=127.0.0.1 port=\(port) dbname=cutover user=ops password=\(FixtureSecrets.adminPassword)")
    }

    /// Runs the `cutover` command with the fixture's backend passwords in its environment.
    func cli(_ arguments: [String]) throws -> ProcessResult {
        try runProcess(Self.cutoverBinary, arguments, environment: Self.proxyEnvironment)
    }

    /// A libpq connection string to a proxy of a test's own.
    func conninfo(_ port: Int, database: String = "onboarding", user: String = "onboarding_user",
                  password: String = FixtureSecrets.clientPassword, extra: String = "") -> String {
        "host=127.0.0.1 port=\(port) dbname=\(database) user=\(user) password=\(password) connect_timeout=10 \(extra)"
    }

    /// A libpq connection string to the proxy.
    func conninfo(database: String = "onboarding", user: String = "onboarding_user",
                  password: String = FixtureSecrets.clientPassword, extra: String = "") -> String {
        "host=127.0.0.1 port=\(proxyPort) dbname=\(database) user=\(user) password=\(password) connect_timeout=10 \(extra)"
    }

    func connect(database: String = "onboarding", user: String = "onboarding_user", extra: String = "") throws -> PQConnection {
        try PQConnection(conninfo(database: database, user: user, extra: extra))
    }

    /// Environment for psql/pgbench through the proxy.
    var clientEnvironment: [String: String] { ["PGPASSWORD": FixtureSecrets.clientPassword] }

    func psqlThroughProxy(_ args: [String], database: String = "onboarding", stdin: Data? = nil, timeout: TimeInterval = 120) throws -> ProcessResult {
        try runProcess("psql", ["-X", "-h", "127.0.0.1", "-p", "\(proxyPort)", "-U", "onboarding_user", "-d", database] + args,
                       environment: clientEnvironment, stdin: stdin, timeout: timeout)
    }

    var proxyPID: Int32 { proxy.processIdentifier }

    /// Resident set size of the proxy, in KiB, from /proc.
    func proxyRSSKiB() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(proxyPID)/status", encoding: .utf8) else { return -1 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
        }
        return -1
    }

    /// An admin console connection.
    func admin() throws -> PQConnection {
        try PQConnection("host=127.0.0.1 port=\(proxyPort) dbname=cutover user=ops password=\(FixtureSecrets.adminPassword) connect_timeout=10")
    }

    /// Direct connections to each side of the recruitment route (bypassing the proxy).
    func recruitmentLegacy() throws -> PQConnection {
        try PQConnection("host=127.0.0.1 port=\(legacy.port) dbname=hexabuilders user=hexabuilders password=\(FixtureSecrets.legacyPassword) options='-c search_path=recruitment'")
    }
    func recruitmentNew() throws -> PQConnection {
        try PQConnection("host=127.0.0.1 port=\(onboarding.port) dbname=recruitment user=recruitment_user password=\(FixtureSecrets.recruitmentPassword)")
    }

    /// Divergence records written so far (the JSON-lines log).
    func divergenceLines() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: "\(directory)/divergences.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    var proxyLog: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// Samples the proxy's RSS on a background thread and keeps the peak.
final class PeakRSSSampler: @unchecked Sendable {
    private let lock = NSLock()
    private var peakKiB = 0
    private var running = true
    private var thread: Thread?

    init(_ fixture: ProxyFixture) {
        peakKiB = fixture.proxyRSSKiB()
        let t = Thread { [self] in
            while self.lock.withLock({ self.running }) {
                let v = fixture.proxyRSSKiB()
                self.lock.withLock { self.peakKiB = max(self.peakKiB, v) }
                usleep(50_000)
            }
        }
        thread = t
        t.start()
    }

    /// Stops sampling and returns the peak in KiB.
    func stop() -> Int {
        lock.withLock { running = false }
        usleep(60_000)
        return lock.withLock { peakKiB }
    }
}
