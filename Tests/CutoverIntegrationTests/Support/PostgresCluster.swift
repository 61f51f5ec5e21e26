// Test support: a throwaway PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 on a
// free port, with scram-sha-256 authentication everywhere.
//
// PostgreSQL refuses to run as root, so when the tests run as root the server commands run as an
// unprivileged OS user (`postgres`, or `cutover-pg` as created by scripts/ensure-deps.sh) through
// `runuser`. Otherwise they run directly as the current user.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct PostgresClusterError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }

    init(_ message: String) { self.message = message }

    init(_ what: String, _ result: ProcessResult) {
        let stderr = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        let stdout = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        var message = "\(what) failed with status \(result.status)"
        if !stderr.isEmpty { message += "\nstderr: \(stderr)" }
        if !stdout.isEmpty { message += "\nstdout: \(stdout)" }
        self.message = message
    }
}

final class PostgresCluster: @unchecked Sendable {
    let name: String
    let host = "127.0.0.1"
    let port: Int
    /// The temporary directory holding everything: data/, log, the Unix socket.
    let baseDirectory: String
    let dataDirectory: String
    let logPath: String
    /// Directory of the Unix-domain socket (`unix_socket_directories`).
    var socketDirectory: String { baseDirectory }
    let superuser = "postgres"
    let superuserPassword: String
    /// The OS user the server runs as, or nil when it runs as the current user.
    let osUser: String?

    private let lock = NSLock()
    private var running = false
    private var destroyed = false

    private init(name: String, port: Int, baseDirectory: String, superuserPassword: String, osUser: String?) {
        self.name = name
        self.port = port
        self.baseDirectory = baseDirectory
        self.dataDirectory = baseDirectory + "/data"
        self.logPath = baseDirectory + "/log"
        self.superuserPassword = superuserPassword
        self.osUser = osUser
    }

    deinit {
        destroy()
    }

    // MARK: - Locating binaries

    /// The PostgreSQL server bin directory: $CUTOVER_PG_BIN, else /usr/lib/postgresql/15/bin, else the
    /// highest version under /usr/lib/postgresql, else nil (binaries are then looked up on PATH).
    static let binDirectory: String? = {
        let fm = FileManager.default
        if let override = ProcessInfo.processInfo.environment["CUTOVER_PG_BIN"], !override.isEmpty {
            return override
        }
        if fm.isExecutableFile(atPath: "/usr/lib/postgresql/15/bin/initdb") { return "/usr/lib/postgresql/15/bin" }
        let root = "/usr/lib/postgresql"
        let versions = ((try? fm.contentsOfDirectory(atPath: root)) ?? [])
            .sorted { (Int($0) ?? 0) > (Int($1) ?? 0) }
        for version in versions where fm.isExecutableFile(atPath: "\(root)/\(version)/bin/initdb") {
            return "\(root)/\(version)/bin"
        }
        return nil
    }()

    /// True when initdb, pg_ctl and psql can be found (use with `.enabled(if:)`).
    static var isAvailable: Bool {
        ["initdb", "pg_ctl", "psql"].allSatisfy { (try? tool($0)) != nil }
    }

    static func tool(_ name: String) throws -> String {
        if let dir = binDirectory, FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return try resolveExecutable(name)
    }

    /// The unprivileged OS user to run the server as when we are root.
    static func unprivilegedOSUser() throws -> String? {
        guard getuid() == 0 else { return nil }
        for candidate in ["postgres", "cutover-pg"] where getpwnam(candidate) != nil {
            return candidate
        }
        throw PostgresClusterError(
            "running as root but neither OS user `postgres` nor `cutover-pg` exists; run scripts/ensure-deps.sh")
    }

    // MARK: - Lifecycle

    /// Creates, configures and starts a new cluster. The superuser is `postgres` with
    /// `superuserPassword`.
    static func start(name: String, superuserPassword: String = "postgres_pw") throws -> PostgresCluster {
        let osUser = try unprivilegedOSUser()

        // Keep the path short: the Unix socket path (dir + "/.s.PGSQL.NNNNN") must fit in 107 bytes.
        let safeName = String(name.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "-" }.prefix(24))
        let random = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(8).lowercased()
        let base = "/tmp/cutover-test-\(safeName)-\(random)"
        try FileManager.default.createDirectory(
            atPath: base, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])

        var cleanupOnFailure = true
        defer { if cleanupOnFailure { try? FileManager.default.removeItem(atPath: base) } }

        if let osUser { try chown(base, to: osUser) }

        // initdb with the superuser password from a file readable only by the server's OS user.
        let pwfile = base + "/pwfile"
        guard FileManager.default.createFile(
            atPath: pwfile, contents: Data((superuserPassword + "\n").utf8), attributes: [.posixPermissions: 0o600])
        else { throw PostgresClusterError("could not write \(pwfile)") }
        if let osUser { try chown(pwfile, to: osUser) }
        let initdb = try runAs(osUser, try tool("initdb"), [
            "-D", base + "/data", "-U", "postgres", "--auth=scram-sha-256", "--pwfile=\(pwfile)",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ], currentDirectory: base)
        try? FileManager.default.removeItem(atPath: pwfile)
        guard initdb.succeeded else { throw PostgresClusterError("initdb", initdb) }

        let hba = """
            # Written by the Cutover test harness.
            local all all scram-sha-256
            host all all 127.0.0.1/32 scram-sha-256

            """
        try hba.write(toFile: base + "/data/pg_hba.conf", atomically: false, encoding: .utf8)

        // The free port can be taken by someone else between picking it and the server binding it:
        // retry with a new port when that happens.
        var lastError: Error = PostgresClusterError("could not start PostgreSQL")
        for _ in 0..<5 {
            let port = freePort()
            try writeConfiguration(base: base, port: port)
            let cluster = PostgresCluster(
                name: name, port: port, baseDirectory: base, superuserPassword: superuserPassword, osUser: osUser)
            do {
                try cluster.pgCtlStart()
                cleanupOnFailure = false
                return cluster
            } catch {
                lastError = error
                // A postmaster that came up too late for pg_ctl's wait must not outlive us.
                if let pid = cluster.pid, isProcessAlive(pid) {
                    kill(pid, SIGKILL)
                    waitForExit(pid, timeout: 10)
                }
                // Keep the directory for the next attempt; don't let deinit remove it.
                cluster.lock.withLock { cluster.running = false; cluster.destroyed = true }
                let log = (try? String(contentsOfFile: base + "/log", encoding: .utf8)) ?? ""
                if !log.contains("could not bind") && !log.contains("Address already in use") { break }
            }
        }
        throw lastError
    }

    private static func writeConfiguration(base: String, port: Int) throws {
        let conf = base + "/data/postgresql.conf"
        var text = (try? String(contentsOfFile: conf, encoding: .utf8)) ?? ""
        let marker = "\n# --- Cutover test harness ---\n"
        if let range = text.range(of: marker) { text.removeSubrange(range.lowerBound...) }
        text += marker + """
            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(base)'
            max_connections = 300
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            shared_buffers = 32MB
            password_encryption = 'scram-sha-256'

            """
        try text.write(toFile: conf, atomically: false, encoding: .utf8)
    }

    private func pgCtlStart() throws {
        let result = try Self.runAs(osUser, try Self.tool("pg_ctl"), [
            "-D", dataDirectory, "-l", logPath, "-w", "-t", "60", "start",
        ], currentDirectory: baseDirectory)
        guard result.succeeded else {
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw PostgresClusterError(
                PostgresClusterError("pg_ctl start (port \(port))", result).message + "\nserver log:\n" + log)
        }
        lock.withLock { running = true }
    }

    /// The postmaster's pid: the first line of data/postmaster.pid, or nil when there is none.
    var pid: Int32? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
              let first = text.split(separator: "\n", omittingEmptySubsequences: false).first
        else { return nil }
        return Int32(first.trimmingCharacters(in: .whitespaces))
    }

    var isRunning: Bool { lock.withLock { running } }

    /// Stops the server with `pg_ctl stop -m <mode>` ("smart", "fast" or "immediate"); if that fails,
    /// SIGKILLs the postmaster. Waits until the postmaster has exited. Never throws.
    func stop(mode: String = "fast") {
        let wasRunning = lock.withLock { () -> Bool in
            let was = running
            running = false
            return was
        }
        guard wasRunning else { return }
        let pid = self.pid
        let stopped: Bool
        if let pgCtl = try? Self.tool("pg_ctl"),
           let result = try? Self.runAs(osUser, pgCtl, ["-D", dataDirectory, "-m", mode, "-w", "-t", "60", "stop"],
                                        timeout: 90, currentDirectory: baseDirectory) {
            stopped = result.succeeded
        } else {
            stopped = false
        }
        if let pid {
            if !stopped { kill(pid, SIGKILL) }
            _ = Self.waitForExit(pid, timeout: stopped ? 30 : 10)
        }
    }

    /// Starts the server again after `stop()` (stopping it first if it is running), on the same port.
    func restart() throws {
        stop()
        try pgCtlStart()
    }

    /// Stops the server and removes its directory. Never throws; safe to call more than once.
    func destroy() {
        let alreadyDestroyed = lock.withLock { () -> Bool in
            let was = destroyed
            destroyed = true
            return was
        }
        guard !alreadyDestroyed else { return }
        stop()
        try? FileManager.default.removeItem(atPath: baseDirectory)
    }

    // MARK: - SQL

    /// Runs `sql` through psql over TCP (`-X -A -t -v ON_ERROR_STOP=1`) and returns its trimmed
    /// stdout. `password` defaults to the superuser password. Throws `PostgresClusterError` (with
    /// psql's stderr) on a nonzero exit.
    @discardableResult
    func psql(_ sql: String, database: String = "postgres", user: String = "postgres", password: String? = nil) throws -> String {
        let result = try runProcess(try Self.tool("psql"), [
            "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", host, "-p", String(port), "-U", user, "-d", database, "-c", sql,
        ], environment: [
            "PGPASSWORD": password ?? superuserPassword,
            "PGPASSFILE": "/dev/null",
            "PGCONNECT_TIMEOUT": "10",
            "PGSSLMODE": "disable",
            "PGOPTIONS": "",
        ], timeout: 120)
        guard result.succeeded else {
            throw PostgresClusterError("psql as \(user) on \(database) (\(sql.prefix(200)))", result)
        }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Turns TLS on with this certificate and key: copied into the data directory (PostgreSQL's default
    /// `server.crt` / `server.key`), owned by the server's OS user with mode 0600, then `ssl = on` and a reload.
    func enableSSL(certificate: String, key: String) throws {
        for (source, name) in [(certificate, "server.crt"), (key, "server.key")] {
            let path = dataDirectory + "/" + name
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: source, toPath: path)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            if let osUser { try Self.chown(path, to: osUser) }
        }
        try psql("ALTER SYSTEM SET ssl = on")
        try psql("SELECT pg_reload_conf()")
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password' [SUPERUSER]`.
    func createRole(name: String, password: String, superuser: Bool = false) throws {
        try psql("CREATE ROLE \(Self.quoteIdentifier(name)) LOGIN PASSWORD \(Self.quoteLiteral(password))"
                 + (superuser ? " SUPERUSER" : ""))
    }

    /// `CREATE DATABASE name [OWNER owner]`.
    func createDatabase(name: String, owner: String? = nil) throws {
        var sql = "CREATE DATABASE \(Self.quoteIdentifier(name))"
        if let owner { sql += " OWNER \(Self.quoteIdentifier(owner))" }
        try psql(sql)
    }

    static func quoteIdentifier(_ identifier: String) -> String {
        "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    static func quoteLiteral(_ literal: String) -> String {
        "'" + literal.replacingOccurrences(of: "'", with: "''") + "'"
    }

    // MARK: - Helpers

    /// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close).
    static func freePort() -> Int {
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        precondition(fd >= 0, "socket() failed: errno \(errno)")
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        precondition(bound == 0, "bind() failed: errno \(errno)")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        precondition(named == 0, "getsockname() failed: errno \(errno)")
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// True when `pid` names a live process. A zombie (exited, not yet reaped — the postmaster is
    /// reparented to PID 1, which may not reap) counts as gone.
    static func isProcessAlive(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        #if os(Linux)
        if let procStat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
           let commandEnd = procStat.lastIndex(of: ")") {
            let state = procStat[procStat.index(after: commandEnd)...].trimmingCharacters(in: .whitespaces).first
            if state == "Z" || state == "X" { return false }
        }
        #endif
        return true
    }

    /// Waits up to `timeout` seconds for `pid` to exit; returns whether it did.
    @discardableResult
    static func waitForExit(_ pid: Int32, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while isProcessAlive(pid) {
            if Date() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    private static func chown(_ path: String, to user: String) throws {
        guard let pw = getpwnam(user) else { throw PostgresClusterError("no such OS user: \(user)") }
        #if canImport(Glibc)
        let rc = Glibc.chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid)
        #else
        let rc = Darwin.chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid)
        #endif
        guard rc == 0 else { throw PostgresClusterError("chown \(path) to \(user) failed: errno \(errno)") }
    }

    /// Runs a server command as `osUser` through runuser, or directly when `osUser` is nil.
    private static func runAs(
        _ osUser: String?, _ executable: String, _ arguments: [String],
        timeout: TimeInterval = 120, currentDirectory: String? = nil
    ) throws -> ProcessResult {
        if let osUser {
            return try runProcess("runuser", ["-u", osUser, "--", executable] + arguments,
                                  timeout: timeout, currentDirectory: currentDirectory)
        }
        return try runProcess(executable, arguments, timeout: timeout, currentDirectory: currentDirectory)
    }
}
