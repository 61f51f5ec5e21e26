// Reads the TOML config file into a CutoverConfig, resolving secrets and collecting every problem with its key.
import Foundation
import TOMLKit

public enum ConfigLoader {
    /// Loads and validates `path`. `environment` is injectable so tests need not touch the process environment.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CutoverConfig {
        let text: String
        switch FileAccess.readText(path) {
        case .success(let t): text = t
        case .failure(let e): throw ConfigErrors(problems: [ConfigProblem(path, "cannot read file: \(e)")])
        }
        return try parse(text, environment: environment, baseDirectory: directory(ofConfigAt: path))
    }

    /// What `serve` starts with: `load`, and what only the machine can tell (the state file's directory takes
    /// a new file). `check-config` runs it too, so it passes only a file `serve` would start with.
    public static func loadForServing(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CutoverConfig {
        let config = try load(path: path, environment: environment)
        let problems = config.problemsBeforeServing()
        if !problems.isEmpty { throw ConfigErrors(problems: problems) }
        return config
    }

    /// What `check-config` reports: everything `loadForServing` does, and mistakes a running proxy survives
    /// until a flip makes them harmful (a route whose two sides are one database).
    public static func check(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CutoverConfig {
        let config = try loadForServing(path: path, environment: environment)
        let problems = config.routesOntoThemselves()
        if !problems.isEmpty { throw ConfigErrors(problems: problems) }
        return config
    }

    /// The absolute directory of the config file at `path`, which relative paths in it are relative to
    /// (`cutover.toml` alone is in the current directory, not in `/`).
    public static func directory(ofConfigAt path: String, currentDirectory: String = FileManager.default.currentDirectoryPath) -> String {
        let absolute = path.hasPrefix("/") ? path : (currentDirectory as NSString).appendingPathComponent(path)
        return ((absolute as NSString).standardizingPath as NSString).deletingLastPathComponent
    }

    public static func parse(_ text: String, environment: [String: String] = [:], baseDirectory: String = ".") throws -> CutoverConfig {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch let e as TOMLParseError {
            let at = e.source.begin
            throw ConfigErrors(problems: [ConfigProblem("line \(at.line), column \(at.column)", "TOML syntax error: \(e.description)")])
        }
        var p = Parser(environment: environment, baseDirectory: baseDirectory)
        let config = p.config(root)
        if !p.problems.isEmpty { throw ConfigErrors(problems: p.problems) }
        return config
    }
}

extension CutoverConfig {
    /// The state file is written as a temporary file renamed over it, so its directory must take a new file.
    /// Without this check a proxy would start and only fail at its first flip, which it could not persist.
    public func problemsBeforeServing() -> [ConfigProblem] {
        guard let path = server.stateFile else { return [] }
        let directory = (path as NSString).deletingLastPathComponent
        guard let e = FileAccess.probeWritable(directory: directory) else { return [] }
        return [ConfigProblem("server.state_file", "cannot create a file in \(directory), the directory of \(path): \(e)")]
    }

    /// Routes whose legacy and new reach the same tables (one database, one schema): every mirrored write
    /// would run there twice. (A legacy side without `legacy_schema` counts as `public`, where it lands.)
    public func routesOntoThemselves() -> [ConfigProblem] {
        routes.values.sorted { $0.name < $1.name }.compactMap { r in
            guard let legacy = backends[r.legacy], let new = backends[r.new], legacy.endpoint == new.endpoint,
                  (r.legacySchema ?? "public") == r.newSchema else { return nil }
            let which = r.legacy == r.new ? "backend \(r.legacy)" : "backends \(r.legacy) and \(r.new), both \(legacy.endpoint)"
            return ConfigProblem("routes.\(r.name).new", "legacy and new are the same database and schema \(r.newSchema) (\(which)); "
                                 + "mirrored writes would run there twice")
        }
    }
}

/// Walks the TOML tree. Unknown keys are problems too: a typo must not silently become a default.
private struct Parser {
    let environment: [String: String]
    let baseDirectory: String
    var problems: [ConfigProblem] = []

    init(environment: [String: String], baseDirectory: String) {
        self.environment = environment; self.baseDirectory = baseDirectory
    }

    mutating func problem(_ key: String, _ message: String) { problems.append(ConfigProblem(key, message)) }

    mutating func checkKeys(_ table: TOMLTable, _ path: String, allowed: Set<String>) {
        for k in table.keys where !allowed.contains(k) { problem(path.isEmpty ? k : "\(path).\(k)", "unknown key") }
    }

    mutating func string(_ t: TOMLTable, _ key: String, _ path: String, required: Bool = false) -> String? {
        guard let v = t[key] else {
            if required { problem("\(path).\(key)", "missing (required)") }
            return nil
        }
        guard let s = v.string else { problem("\(path).\(key)", "must be a string"); return nil }
        return s
    }

    mutating func int(_ t: TOMLTable, _ key: String, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let v = t[key] else { return nil }
        guard let i = v.int else { problem("\(path).\(key)", "must be an integer"); return nil }
        guard range.contains(i) else { problem("\(path).\(key)", "must be between \(range.lowerBound) and \(range.upperBound)"); return nil }
        return i
    }

    /// At most 10⁷ s (about 115 days): TOML's `inf` or a huge value would overflow the milliseconds the
    /// timers count in.
    mutating func seconds(_ t: TOMLTable, _ key: String, _ path: String) -> Double? {
        guard let v = t[key] else { return nil }
        if let i = v.int, (0...10_000_000).contains(i) { return Double(i) }
        if let d = v.double, d.isFinite, d >= 0, d <= 1e7 { return d }
        problem("\(path).\(key)", "must be a number of seconds from 0 to 10000000"); return nil
    }

    mutating func bool(_ t: TOMLTable, _ key: String, _ path: String) -> Bool? {
        guard let v = t[key] else { return nil }
        guard let b = v.bool else { problem("\(path).\(key)", "must be true or false"); return nil }
        return b
    }

    /// `password`, `password_env` or `password_file`: at most one.
    mutating func secret(_ t: TOMLTable, _ path: String) -> String? {
        let given = ["password", "password_env", "password_file"].filter { t[$0] != nil }
        if given.count > 1 { problem(path, "give only one of \(given.joined(separator: ", "))"); return nil }
        if let p = string(t, "password", path) { return p }
        if let name = string(t, "password_env", path) {
            guard let v = environment[name] else { problem("\(path).password_env", "environment variable \(name) is not set"); return nil }
            return v
        }
        if let file = string(t, "password_file", path) {
            let full = absolute(file)
            switch FileAccess.readText(full) {
            case .success(let v): return v.trimmingCharacters(in: .newlines)
            case .failure(let e): problem("\(path).password_file", "cannot read \(full): \(e)"); return nil
            }
        }
        return nil
    }

    mutating func config(_ root: TOMLTable) -> CutoverConfig {
        checkKeys(root, "", allowed: ["server", "users", "backends", "routes"])
        var c = CutoverConfig()
        if let s = root["server"] {
            if let t = s.table { c.server = server(t) } else { problem("server", "must be a table") }
        }
        if let u = root["users"] {
            if let arr = u.array {
                for (i, v) in arr.enumerated() {
                    guard let t = v.table else { problem("users[\(i)]", "must be a table"); continue }
                    // A user is named by its name in problems (users[3] means nothing to someone reading the file).
                    let path = t["name"]?.string.map { key("users", $0) } ?? "users[\(i)]"
                    if let user = user(t, path) {
                        if c.users[user.name] != nil { problem("\(path).name", "duplicate user \(user.name)") }
                        if user.auth == .cert && (c.server.clientTLSCAFile == nil || c.server.clientTLS == .disable) {
                            problem("\(path).auth", "cert needs client TLS and [server] client_tls_ca_file (the CAs client certificates must chain to)")
                        }
                        c.users[user.name] = user
                    }
                }
            } else { problem("users", "must be an array of tables ([[users]])") }
        }
        if let b = root["backends"]?.table {
            for name in b.keys {
                guard let t = b[name]?.table else { problem("backends.\(name)", "must be a table"); continue }
                if let backend = backend(name, t) { c.backends[name] = backend }
            }
        }
        if let r = root["routes"]?.table {
            for name in r.keys {
                guard let t = r[name]?.table else { problem("routes.\(name)", "must be a table"); continue }
                let path = "routes.\"\(name)\""
                if name == "*" {
                    checkKeys(t, path, allowed: ["backend"])
                    if let b = string(t, "backend", path, required: true) {
                        if c.backends[b] == nil { problem("\(path).backend", "no backend named \(b)") }
                        c.wildcardBackend = b
                    }
                    continue
                }
                if let route = route(name, t, backends: c.backends) { c.routes[name] = route }
            }
        }
        if c.routes[c.server.adminDatabase] != nil {
            problem("routes.\(c.server.adminDatabase)", "collides with the admin database name")
        }
        if c.users.isEmpty { problem("users", "at least one [[users]] entry is required") }
        for (name, u) in c.users.sorted(by: { $0.key < $1.key }) {
            for r in (u.routes ?? []).sorted() where c.routes[r] == nil && !(r == "*" && c.wildcardBackend != nil) {
                problem("\(key("users", name)).routes", "no route named \(r)")
            }
        }
        return c
    }

    mutating func server(_ t: TOMLTable) -> ServerConfig {
        var s = ServerConfig()
        // The keys SHOW CONFIG lists are the keys the file may have: one list for both.
        checkKeys(t, "server", allowed: Set(s.settings.map(\.key)))
        if let (host, port) = hostPort(t, "listen") { s.listenHost = host; s.listenPort = port }
        if let (host, port) = hostPort(t, "metrics_listen") { s.metricsHost = host; s.metricsPort = port }
        if s.metricsHost != nil, s.metricsHost == s.listenHost, s.metricsPort == s.listenPort, s.listenPort != 0 {
            problem("server.metrics_listen", "must differ from server.listen")
        }
        if let v = int(t, "max_clients", "server", range: 1...1_000_000) { s.maxClients = v }
        if let v = int(t, "max_message_size", "server", range: 1024...(1 << 30)) { s.maxMessageSize = v }
        if let v = int(t, "write_high_water", "server", range: 4096...(1 << 30)) { s.writeHighWater = v }
        if let v = seconds(t, "connect_timeout", "server") { s.connectTimeout = v }
        if let v = seconds(t, "auth_timeout", "server") { s.authTimeout = v }
        if let v = seconds(t, "client_idle_timeout", "server") { s.clientIdleTimeout = v }
        if let v = seconds(t, "idle_transaction_timeout", "server") { s.idleTransactionTimeout = v }
        if let v = seconds(t, "shutdown_timeout", "server") { s.shutdownTimeout = v }
        if let v = string(t, "admin_database", "server") { s.adminDatabase = v }
        if let v = string(t, "state_file", "server") { s.stateFile = absolute(v) }
        if let v = string(t, "divergence_log", "server") { s.divergenceLog = absolute(v) }
        if let v = bool(t, "log_literals", "server") { s.logLiterals = v }
        if let v = int(t, "divergence_memory", "server", range: 0...1_000_000) { s.divergenceMemory = v }
        if let v = int(t, "divergence_log_limit", "server", range: 0...1_000_000) { s.divergenceLogLimit = v }
        if let v = int(t, "mirror_queue_bytes", "server", range: 65536...(1 << 34)) { s.mirrorQueueBytes = v }
        if let v = int(t, "mirror_queue_statements", "server", range: 1...10_000_000) { s.mirrorQueueStatements = v }
        if let v = seconds(t, "follower_timeout", "server") { s.followerTimeout = v }
        if let v = seconds(t, "flip_timeout", "server") { s.flipTimeout = v }
        if let v = int(t, "follower_logins", "server", range: 1...1000) { s.followerLogins = v }
        if let v = seconds(t, "dns_refresh", "server") { s.dnsRefresh = v }
        if let v = int(t, "backend_pool_size", "server", range: 0...100_000) { s.backendPoolSize = v }
        if let v = int(t, "backend_pool_total", "server", range: 1...1_000_000) { s.backendPoolTotal = v }
        if let v = seconds(t, "backend_idle_timeout", "server") { s.backendIdleTimeout = v }
        if let v = seconds(t, "backend_lifetime", "server") { s.backendLifetime = v }
        if let v = bool(t, "tcp_keepalive", "server") { s.tcpKeepalive = v }
        if let v = int(t, "tcp_keepidle", "server", range: 0...32767) { s.tcpKeepidle = v }
        if let v = int(t, "tcp_keepintvl", "server", range: 0...32767) { s.tcpKeepintvl = v }
        if let v = int(t, "tcp_keepcnt", "server", range: 0...127) { s.tcpKeepcnt = v }
        if let v = int(t, "tcp_user_timeout", "server", range: 0...Int(Int32.max)) { s.tcpUserTimeout = v }
        if let v = string(t, "unix_socket_dir", "server") {
            s.unixSocketDirectory = absolute(v)
            // sun_path holds 107 bytes; the file name adds up to 16.
            if (s.unixSocketDirectory! + "/.s.PGSQL.65535").utf8.count > 107 {
                problem("server.unix_socket_dir", "is too long for a socket path (at most 91 bytes)")
            }
        }
        clientTLS(t, into: &s)
        return s
    }

    /// `client_tls` and its files. With a certificate and key but no mode, TLS is allowed (configuring a
    /// certificate means wanting it used). The files are loaded here too, so check-config reports a bad one.
    mutating func clientTLS(_ t: TOMLTable, into s: inout ServerConfig) {
        s.clientTLSCertificateFile = string(t, "client_tls_cert_file", "server").map(absolute)
        s.clientTLSKeyFile = string(t, "client_tls_key_file", "server").map(absolute)
        s.clientTLSCAFile = string(t, "client_tls_ca_file", "server").map(absolute)
        s.clientTLSCRLFile = string(t, "client_tls_crl_file", "server").map(absolute)
        if let m = string(t, "client_tls", "server") {
            if let v = ClientTLSMode(rawValue: m) { s.clientTLS = v } else { problem("server.client_tls", "must be disable, allow or require") }
        } else if s.clientTLSCertificateFile != nil && s.clientTLSKeyFile != nil {
            s.clientTLS = .allow
        }
        guard s.clientTLS != .disable else { return }
        guard let certificate = s.clientTLSCertificateFile, let key = s.clientTLSKeyFile else {
            return problem("server.client_tls", "\(s.clientTLS.rawValue) needs client_tls_cert_file and client_tls_key_file")
        }
        do { _ = try TLSContext(certificateFile: certificate, keyFile: key) } catch {
            problem("server.client_tls_cert_file", "\(error)")
        }
        if let ca = s.clientTLSCAFile {
            do { _ = try TLSContext(certificateFile: certificate, keyFile: key, clientCAFile: ca) } catch {
                return problem("server.client_tls_ca_file", "\(error)")
            }
            if let crl = s.clientTLSCRLFile {
                do { _ = try TLSContext(certificateFile: certificate, keyFile: key, clientCAFile: ca, clientCRLFile: crl) } catch {
                    problem("server.client_tls_crl_file", "\(error)")
                }
            }
        } else if s.clientTLSCRLFile != nil {
            problem("server.client_tls_crl_file", "needs client_tls_ca_file (the CAs whose revocations it lists)")
        }
    }

    /// A `host:port` setting of [server].
    mutating func hostPort(_ t: TOMLTable, _ key: String) -> (String, Int)? {
        guard let value = string(t, key, "server") else { return nil }
        if let colon = value.lastIndex(of: ":"), let port = Int(value[value.index(after: colon)...]), (0...65535).contains(port) {
            return (String(value[..<colon]), port)
        }
        problem("server.\(key)", "must be host:port, got \(value)")
        return nil
    }

    /// `table.name`, the name quoted when it is not a bare TOML key (as the file itself must write it).
    func key(_ table: String, _ name: String) -> String {
        let bare = !name.isEmpty && name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "_" || $0 == "-") }
        return bare ? "\(table).\(name)" : "\(table).\"\(name)\""
    }

    /// Paths in the file are relative to the file's directory.
    func absolute(_ path: String) -> String { path.hasPrefix("/") ? path : (baseDirectory as NSString).appendingPathComponent(path) }

    mutating func user(_ t: TOMLTable, _ path: String) -> UserConfig? {
        checkKeys(t, path, allowed: ["name", "auth", "password", "password_env", "password_file", "scram", "admin", "routes"])
        guard let name = string(t, "name", path, required: true) else { return nil }
        var auth = AuthMethod.scramSHA256
        if let a = string(t, "auth", path) {
            if let m = AuthMethod(rawValue: a) { auth = m } else { problem("\(path).auth", "must be scram-sha-256, md5, cert or trust") }
        }
        let password = secret(t, path)
        var verifier: SCRAMVerifier?
        if let s = string(t, "scram", path) {
            verifier = SCRAMVerifier(parsing: s)
            if verifier == nil { problem("\(path).scram", "not a SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> verifier") }
        }
        let sourceGiven = ["password", "password_env", "password_file", "scram"].contains { t[$0] != nil }
        if auth != .trust && auth != .cert && !sourceGiven {
            problem(path, "needs password, password_env, password_file or scram (or auth = \"cert\" or \"trust\")")
        }
        let plaintextGiven = ["password", "password_env", "password_file"].contains { t[$0] != nil }
        if auth == .md5 && sourceGiven && !plaintextGiven { problem(path, "md5 authentication needs a plaintext password source") }
        var user = UserConfig(name: name, auth: auth, password: password, scram: verifier, admin: bool(t, "admin", path) ?? false)
        if let v = t["routes"] {
            if let names = v.array?.compactMap({ $0.string }), names.count == v.array?.count { user.routes = Set(names) }
            else { problem("\(path).routes", "must be an array of route names") }
        }
        return user
    }

    mutating func backend(_ name: String, _ t: TOMLTable) -> BackendConfig? {
        let path = "backends.\(name)"
        checkKeys(t, path, allowed: ["host", "port", "database", "user", "password", "password_env", "password_file", "tls", "tls_ca_file"])
        let host = string(t, "host", path) ?? "127.0.0.1"
        let port = int(t, "port", path, range: 1...65535) ?? 5432
        let user = string(t, "user", path, required: true)
        let database = string(t, "database", path) ?? user
        let password = secret(t, path)
        guard let user, let database else { return nil }
        var b = BackendConfig(name: name, host: host, port: port, database: database, user: user, password: password)
        backendTLS(t, path, into: &b)
        return b
    }

    /// `tls` and `tls_ca_file` of a backend; the CA file is loaded here so check-config reports a bad one.
    mutating func backendTLS(_ t: TOMLTable, _ path: String, into b: inout BackendConfig) {
        if let m = string(t, "tls", path) {
            if let v = BackendTLSMode(rawValue: m) { b.tls = v } else {
                problem("\(path).tls", "must be disable, prefer, require, verify-ca or verify-full")
            }
        }
        b.tlsCAFile = string(t, "tls_ca_file", path).map(absolute)
        if b.tls.verifies && b.tlsCAFile == nil { problem("\(path).tls", "\(b.tls.rawValue) needs tls_ca_file") }
        guard let ca = b.tlsCAFile, b.tls.verifies else { return }
        do { _ = try TLSContext(caFile: ca) } catch { problem("\(path).tls_ca_file", "\(error)") }
    }

    mutating func route(_ name: String, _ t: TOMLTable, backends: [String: BackendConfig]) -> RouteConfig? {
        let path = "routes.\(name)"
        checkKeys(t, path, allowed: ["legacy", "legacy_schema", "new", "new_schema", "phase", "mirror"])
        let legacy = string(t, "legacy", path, required: true)
        let new = string(t, "new", path, required: true)
        for (key, b) in [("legacy", legacy), ("new", new)] {
            if let b, backends[b] == nil { problem("\(path).\(key)", "no backend named \(b)") }
        }
        var phase = Phase.legacy
        if let p = string(t, "phase", path) {
            if let v = Phase(rawValue: p) { phase = v } else { problem("\(path).phase", "must be legacy, dual-legacy, dual-new or new") }
        }
        var mirror = MirrorMode.async
        if let m = string(t, "mirror", path) {
            if let v = MirrorMode(rawValue: m) { mirror = v } else { problem("\(path).mirror", "must be async or sync") }
        }
        let schema = string(t, "legacy_schema", path), newSchema = string(t, "new_schema", path)
        for (key, value) in [("legacy_schema", schema), ("new_schema", newSchema)] where value?.isEmpty == true {
            problem("\(path).\(key)", "must not be empty")
        }
        guard let legacy, let new else { return nil }
        return RouteConfig(name: name, legacy: legacy, legacySchema: schema, new: new, newSchema: newSchema ?? "public", phase: phase, mirror: mirror)
    }
}
