// Integration: a proxy of the test's own — reload on SIGHUP, limits, timeouts, unreachable backends, graceful SIGTERM.
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct LifecycleTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func outOfFileDescriptorsTheListenerTurnsClientsAwayWithoutSpinningAndRecovers() throws {
        let (p, port, _) = try f.ownProxy("emfile", fileLimit: 40)
        defer { stopBackgroundProcess(p) }
        func cpuTicks() -> Int {
            let stat = (try? String(contentsOfFile: "/proc/\(p.processIdentifier)/stat", encoding: .utf8)) ?? ""
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            return fields.count > 13 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : -1 // utime + stime
        }
        let before = cpuTicks()
        // More connections than descriptors: the ones past the limit are accepted and closed at once.
        var flood: [RawClient]? = try (0..<60).map { _ in try RawClient(port: port) }
        usleep(300_000)
        var closedAtOnce = 0
        for c in flood!.suffix(15) {
            var tv = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var byte: UInt8 = 0
            if recv(c.fd, &byte, 1, 0) == 0 { closedAtOnce += 1 }
        }
        #expect(closedAtOnce > 0, "connections past the limit were closed, not left hanging")
        usleep(700_000)
        let spent = cpuTicks() - before
        #expect(spent >= 0 && spent < 50, "the listener did not spin on the connections it could not take: \(spent) ticks")
        flood = nil // the clients leave
        // Once clients leave, the proxy serves again.
        let deadline = Date().addingTimeInterval(10)
        var served = false
        while !served && Date() < deadline {
            served = (try? PQConnection(f.conninfo(port)).scalar("SELECT 1")) == "1"
            if !served { usleep(200_000) }
        }
        #expect(served)
    }

    @Test func nonASCIIPasswordsArePreparedAsPostgreSQLPreparesThem() throws {
        // PostgreSQL stores the verifier of SASLprep(password): NFKC turns the Roman numeral into "IX" and
        // composes the accents. The proxy must derive the same keys, toward the backend and for its clients.
        let stored = "\u{2168}-s\u{E9}curit\u{E9}", spelled = "\u{2168}-se\u{301}curite\u{301}"
        try f.legacy.createRole(name: "prepared_user", password: stored)
        try f.legacy.psql("GRANT CONNECT ON DATABASE hexabuilders TO prepared_user")
        let (p, port, _) = try f.ownProxy("saslprep", rest: """
            [[users]]
            name = "client_\u{2168}"
            password = "\(spelled)"
            \(f.backendTOML("prepared", user: "prepared_user", password: spelled))
            [routes.prepared]
            legacy = "prepared"
            new = "prepared"
            """)
        defer { stopBackgroundProcess(p) }
        let c = try PQConnection(f.conninfo(port, database: "prepared", user: "client_\u{2168}", password: stored))
        #expect(try c.scalar("SELECT current_user") == "prepared_user")
    }

    @Test func sighupReloadsUsersAndRoutesForNewSessions() throws {
        let (p, port, path) = try f.ownProxy("reload")
        defer { stopBackgroundProcess(p) }
        let before = try PQConnection(f.conninfo(port))
        #expect(throws: PQError.self) { try PQConnection(f.conninfo(port, database: "recruitment", user: "recruiter", password: "r_pw")) }
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text += "\n[[users]]\nname = \"recruiter\"\npassword = \"r_pw\"\n[routes.recruitment]\nlegacy = \"legacy\"\nlegacy_schema = \"recruitment\"\nnew = \"legacy\"\n"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        let after = try PQConnection(f.conninfo(port, database: "recruitment", user: "recruiter", password: "r_pw"))
        #expect(try after.scalar("SELECT current_schema()") == "recruitment")
        #expect(try before.scalar("SELECT current_schema()") == "onboarding") // the old session carries on
        // Settings: a reload applies max_clients; a new listen port waits for a restart, and SHOW CONFIG says so.
        let admin = { try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword)) }
        let otherPort = PostgresCluster.freePort()
        text = text.replacingOccurrences(of: "listen = \"127.0.0.1:\(port)\"", with: "listen = \"127.0.0.1:\(otherPort)\"\nmax_clients = 77")
        try (text + ProxyFixture.adminTOML).write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        let settings = try admin().query("SHOW CONFIG")
        func row(_ key: String) -> [String?]? { settings.first { $0[0] == key } }
        #expect(row("max_clients") == ["max_clients", "77", "1000", "reload", nil], "\(settings)")
        #expect(row("listen") == ["listen", "127.0.0.1:\(port)", "127.0.0.1:6432", "restart", "127.0.0.1:\(otherPort)"])
        #expect(row("state_file")?[1] == nil && row("state_file")?[3] == "restart")
        #expect(try PQConnection(f.conninfo(port)).isOK, "still listening where it started")
        let log = try String(contentsOfFile: "\(f.directory)/reload.log", encoding: .utf8)
        #expect(log.contains("a setting changed in the file takes effect only at a restart") && log.contains("key=listen"))
        // A broken file is rejected and the running config kept.
        try "[server\n".write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(300_000)
        #expect(try PQConnection(f.conninfo(port, database: "recruitment", user: "recruiter", password: "r_pw")).isOK)
    }

    @Test func aSessionIdleInATransactionPastTheTimeoutIsClosedAndItsTransactionRolledBack() throws {
        try f.legacy.psql("CREATE TABLE IF NOT EXISTS onboarding.idle_tx_probe (v text); DELETE FROM onboarding.idle_tx_probe",
                          database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        let (p, port, _) = try f.ownProxy("idle-tx", server: "idle_transaction_timeout = 1", rest: "[[users]]\nname = \"trust_user\"\nauth = \"trust\"\n")
        defer { stopBackgroundProcess(p) }
        // (A raw client, to read the FATAL as it arrives: libpq hands an error that comes while it is idle to its
        // notice processor.)
        let holder = try RawClient(port: port)
        holder.send(RawClient.startup([("user", "trust_user"), ("database", "onboarding")]))
        #expect(holder.readUntilReady().ready)
        holder.send(RawClient.query("BEGIN; INSERT INTO idle_tx_probe VALUES ('held')"))
        #expect(holder.readUntilReady().ready)
        // Busy in a transaction for longer than the timeout, and idle outside one: neither is closed.
        let busy = try PQConnection(f.conninfo(port))
        try busy.query("BEGIN")
        busy.start("SELECT pg_sleep(2)")
        let idle = try PQConnection(f.conninfo(port))
        let started = Date()
        let (farewell, closed) = holder.readUntilClosed()
        let waited = Date().timeIntervalSince(started)
        #expect(closed && RawClient.errorCode(in: farewell) == "25P03"
                && String(decoding: farewell, as: UTF8.self).contains("terminating connection due to idle-in-transaction timeout"),
                "\(String(decoding: farewell, as: UTF8.self))")
        #expect(waited >= 0.5 && waited < 4, "closed after \(waited) s")
        #expect(busy.awaitResults() == nil, "a statement running in a transaction is not idle")
        try busy.query("COMMIT")
        #expect(try idle.scalar("SELECT 1") == "1")
        usleep(200_000)
        #expect(try f.legacy.psql("SELECT count(*) FROM onboarding.idle_tx_probe", database: "hexabuilders", user: "hexabuilders",
                                  password: FixtureSecrets.legacyPassword).trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                "the held transaction was rolled back")
    }

    @Test func maxClientsIdleTimeoutAndUnreachableBackend() throws {
        let deadPort = PostgresCluster.freePort()
        let (p, port, _) = try f.ownProxy("limits", server: "max_clients = 2\nclient_idle_timeout = 1\nconnect_timeout = 2", rest: """
            [backends.dead]
            port = \(deadPort)
            user = "nobody"
            [routes.gone]
            legacy = "dead"
            new = "dead"
            """)
        defer { stopBackgroundProcess(p) }
        // Unreachable backend: 08006 with the backend's name, not its password.
        do { _ = try PQConnection(f.conninfo(port, database: "gone")); Issue.record("connected to a dead backend") } catch let e as PQError {
            #expect(e.message.contains("backend \"dead\"") && e.message.contains("\(deadPort)"), "\(e.message)")
        }
        let a = try PQConnection(f.conninfo(port))
        let b = try PQConnection(f.conninfo(port))
        do { _ = try PQConnection(f.conninfo(port)); Issue.record("third client accepted") } catch let e as PQError {
            #expect(e.message.contains("too many clients"), "\(e.message)")
        }
        // Idle past client_idle_timeout: closed by the proxy.
        try a.query("SELECT 1")
        try b.query("BEGIN") // in a transaction: not idle, so kept
        sleep(2)
        #expect(throws: PQError.self) { try a.query("SELECT 1") }
        #expect(try b.scalar("SELECT 'in transaction, kept'") == "in transaction, kept")
    }

    @Test func shutdownWaitsForAnUnsyncedExtendedBatchAndACopyInProgress() throws {
        try f.legacy.psql("""
            CREATE TABLE IF NOT EXISTS onboarding.batch_probe (v int); DELETE FROM onboarding.batch_probe;
            CREATE TABLE IF NOT EXISTS onboarding.copy_probe (v int); DELETE FROM onboarding.copy_probe;
            """, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        let (p, port, _) = try f.ownProxy("unsynced", rest: "[[users]]\nname = \"trust_user\"\nauth = \"trust\"\n")
        defer { stopBackgroundProcess(p) }
        func client() throws -> RawClient {
            let c = try RawClient(port: port)
            c.send(RawClient.startup([("user", "trust_user"), ("database", "onboarding")]))
            #expect(c.readUntilReady().ready)
            return c
        }
        // Between a unit's Execute and its Sync, and in the middle of a COPY FROM STDIN, the session is not idle.
        let batch = try client(), copy = try client()
        batch.send(RawClient.extendedWithoutSync("INSERT INTO batch_probe VALUES (1)"))
        copy.send(RawClient.query("COPY copy_probe FROM STDIN"))
        var buffer = [UInt8](repeating: 0, count: 256)
        #expect(recv(copy.fd, &buffer, buffer.count, 0) > 0 && buffer[0] == UInt8(ascii: "G"), "CopyInResponse")
        copy.send(RawClient.message("d", Array("1\n".utf8)))
        usleep(200_000)
        kill(p.processIdentifier, SIGTERM)
        usleep(400_000)
        batch.send(RawClient.message("S", []))
        let (batchAnswer, batchClosed) = batch.readUntilClosed()
        copy.send(RawClient.message("d", Array("2\n".utf8)) + RawClient.message("c", []))
        let (copyAnswer, copyClosed) = copy.readUntilClosed()
        let batchText = String(decoding: batchAnswer, as: UTF8.self), copyText = String(decoding: copyAnswer, as: UTF8.self)
        #expect(batchText.contains("INSERT 0 1") && batchClosed && RawClient.errorCode(in: batchAnswer) == "57P01",
                "the batch ran to its Sync, then the session closed: \(batchText)")
        #expect(copyText.contains("COPY 2") && copyClosed, "the copy finished with both rows: \(copyText)")
        let rows = try f.legacy.psql("SELECT (SELECT count(*) FROM onboarding.batch_probe) || ',' || (SELECT count(*) FROM onboarding.copy_probe)",
                                     database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        #expect(rows.trimmingCharacters(in: .whitespacesAndNewlines) == "1,2")
    }

    @Test func sigtermLetsATransactionFinishThenStops() throws {
        let (p, port, _) = try f.ownProxy("shutdown", server: "shutdown_timeout = 10")
        let busy = try PQConnection(f.conninfo(port))
        let idle = try PQConnection(f.conninfo(port))
        try busy.query("BEGIN")
        try busy.query("UPDATE candidates SET v = v + 1 WHERE id = 2")
        kill(p.processIdentifier, SIGTERM)
        usleep(300_000)
        #expect(p.isRunning)
        // The idle session was ended; new clients are refused; the open transaction can still commit.
        #expect(throws: PQError.self) { try idle.query("SELECT 1") }
        #expect(throws: PQError.self) { try PQConnection(f.conninfo(port)) }
        try busy.query("UPDATE candidates SET v = v + 1 WHERE id = 2")
        try busy.query("COMMIT")
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!p.isRunning, "proxy still running after its last session ended")
        #expect(p.terminationStatus == 0)
        let log = (try? String(contentsOfFile: "\(f.directory)/shutdown.log", encoding: .utf8)) ?? ""
        #expect(log.contains("loop_close=0"), "\(log)")
    }

    /// One HTTP exchange with the metrics endpoint: status and body.
    func http(_ port: Int, _ request: String) throws -> (status: Int, body: String) {
        let c = try RawClient(port: port)
        c.send(Array(request.utf8))
        let (bytes, closed) = c.readUntilClosed()
        #expect(closed, "the endpoint closes after its answer")
        let text = String(decoding: bytes, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? -1
        return (status, text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func metricsAndProbesAnswerOverHTTPAndReadinessDropsAtShutdown() throws {
        let mport = PostgresCluster.freePort()
        let (p, port, _) = try f.ownProxy("metrics", server: "metrics_listen = \"127.0.0.1:\(mport)\"\nshutdown_timeout = 10")
        defer { stopBackgroundProcess(p) }
        #expect(try http(mport, "GET /healthz HTTP/1.1\r\nHost: cutover\r\n\r\n") == (200, "ok\n"))
        #expect(try http(mport, "GET /readyz HTTP/1.0\r\n\r\n") == (200, "ready\n"))
        let c = try PQConnection(f.conninfo(port))
        for _ in 0..<3 { _ = try c.scalar("SELECT 1") }
        let (status, metrics) = try http(mport, "GET /metrics HTTP/1.1\r\n\r\n")
        #expect(status == 200)
        #expect(metrics.contains("# TYPE cutover_route_statements_total counter\n"))
        #expect(metrics.contains("cutover_route_phase{route=\"onboarding\",phase=\"legacy\"} 1\n"))
        #expect(metrics.contains("cutover_route_phase{route=\"onboarding\",phase=\"new\"} 0\n"))
        #expect(metrics.contains("cutover_sessions_active 1\n"))
        #expect(metrics.contains("cutover_route_divergences_total{route=\"onboarding\",kind=\"row_content\"} 0\n"))
        let statements = metrics.split(separator: "\n").first { $0.hasPrefix("cutover_route_statements_total{route=\"onboarding\"}") }
        #expect((statements?.split(separator: " ").last.flatMap { Int($0) } ?? 0) >= 3, "\(statements ?? "missing")")
        #expect(try http(mport, "HEAD /metrics HTTP/1.1\r\n\r\n").body.isEmpty)
        #expect(try http(mport, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status == 405)
        #expect(try http(mport, "GET /nope HTTP/1.1\r\n\r\n").status == 404)
        #expect(try http(mport, "\u{16}\u{03}\u{01}\u{02}\u{00}\r\n\r\n").status == 400)
        // The endpoint serves nothing PostgreSQL-shaped, and its clients do not disturb a session.
        #expect(try c.scalar("SELECT 2") == "2")
        // Shutting down: not ready (Kubernetes stops routing clients here) while a transaction finishes; still alive.
        try c.query("BEGIN")
        kill(p.processIdentifier, SIGTERM)
        usleep(300_000)
        #expect(try http(mport, "GET /readyz HTTP/1.1\r\n\r\n") == (503, "shutting down\n"))
        #expect(try http(mport, "GET /healthz HTTP/1.1\r\n\r\n").status == 200)
        try c.query("COMMIT")
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!p.isRunning && p.terminationStatus == 0)
        #expect(throws: PQError.self) { _ = try self.http(mport, "GET /healthz HTTP/1.1\r\n\r\n") }
        let log = (try? String(contentsOfFile: "\(f.directory)/metrics.log", encoding: .utf8)) ?? ""
        #expect(log.contains("loop_close=0"), "every handle, the endpoint's too, closed: \(log)")
    }

    @Test func aReloadKeepsAUsersSCRAMSaltWhenItsPasswordDidNotChange() throws {
        let (p, port, path) = try f.ownProxy("reload-salt")
        defer { stopBackgroundProcess(p) }
        /// The salt the proxy's SCRAM server-first-message names for `user` (the exchange is then abandoned).
        func salt(_ user: String) throws -> String {
            let c = try RawClient(port: port)
            c.send(RawClient.startup([("user", user), ("database", "onboarding")]))
            var buffer = [UInt8](repeating: 0, count: 4096)
            guard recv(c.fd, &buffer, buffer.count, 0) > 0, buffer[0] == UInt8(ascii: "R") else { return "" }
            let first = Array("n,,n=,r=abcdefgh".utf8)
            let body = Array("SCRAM-SHA-256".utf8) + [0] + withUnsafeBytes(of: UInt32(first.count).bigEndian, Array.init) + first
            c.send(RawClient.message("p", body))
            let n = recv(c.fd, &buffer, buffer.count, 0)
            guard n > 9 else { return "" }
            let text = String(decoding: buffer[9..<n], as: UTF8.self)
            return text.split(separator: ",").first { $0.hasPrefix("s=") }.map(String.init) ?? ""
        }
        let before = try salt("onboarding_user"), unknownBefore = try salt("nobody_here"), again = try salt("onboarding_user")
        #expect(before.hasPrefix("s=") && before == again)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try salt("onboarding_user") == before, "same password, same salt after the reload")
        #expect(try salt("nobody_here") == unknownBefore, "an unknown user's mock salt does not change either")
        // A changed password gets a new verifier (and salt).
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try text.replacingOccurrences(of: "password = \"\(FixtureSecrets.clientPassword)\"", with: "password = \"a new one\"")
            .write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try salt("onboarding_user") != before)
    }

    @Test func aMetricsClientThatNeverFinishesItsRequestIsDroppedAfterFiveSeconds() throws {
        let mport = PostgresCluster.freePort()
        let (p, _, _) = try f.ownProxy("metrics-slow", server: "metrics_listen = \"127.0.0.1:\(mport)\"")
        defer { stopBackgroundProcess(p) }
        let slow = try RawClient(port: mport)
        slow.send(Array("GET /metr".utf8)) // and nothing more, and no other client comes
        let started = Date()
        let (_, closed) = slow.readUntilClosed()
        let waited = Date().timeIntervalSince(started)
        #expect(closed && waited > 4 && waited < 8, "closed after \(waited) s")
        #expect(try http(mport, "GET /healthz HTTP/1.1\r\n\r\n") == (200, "ok\n"))
    }

    @Test func backendLoginsAndRefusalsAreCountedForTheAdminConsoleAndMetrics() throws {
        let mport = PostgresCluster.freePort()
        let (p, port, _) = try f.ownProxy("backend-logins", server: "metrics_listen = \"127.0.0.1:\(mport)\"", rest: """
            \(ProxyFixture.adminTOML)
            \(f.backendTOML("rotated", password: "an old password"))
            [routes.refused]
            legacy = "rotated"
            legacy_schema = "onboarding"
            new = "rotated"
            """)
        defer { stopBackgroundProcess(p) }
        let held = try PQConnection(f.conninfo(port))
        do { _ = try PQConnection(f.conninfo(port)) }
        #expect(throws: PQError.self) { try PQConnection(f.conninfo(port, database: "refused")) }
        #expect(throws: PQError.self) { try PQConnection(f.conninfo(port, password: "not_it")) }
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        // The second client's Terminate may still be on its way: wait until only the held session is left.
        let deadline = Date().addingTimeInterval(3)
        while try admin.query("SHOW BACKENDS").first(where: { $0[0] == "legacy" })?[7] != "1" && Date() < deadline { usleep(50_000) }
        let rows = try admin.query("SHOW BACKENDS")
        let legacy = try #require(rows.first { $0[0] == "legacy" }), rotated = try #require(rows.first { $0[0] == "rotated" })
        #expect(legacy[7] == "1" && legacy[10] == "2" && legacy[11] == "0" && legacy[12] == nil, "\(legacy)")
        #expect(rotated[10] == "0" && rotated[11] == "1", "\(rotated)")
        #expect(rotated[12]?.hasPrefix("08006 backend \"rotated\" rejected the proxy's login as \"hexabuilders\": password authentication failed") == true
                && rotated[12]?.hasSuffix(" s ago)") == true, "\(rotated)")
        let metrics = try http(mport, "GET /metrics HTTP/1.1\r\n\r\n").body
        for line in ["cutover_backend_logins_total{backend=\"legacy\"} 2", "cutover_backend_login_failures_total{backend=\"rotated\"} 1",
                     "cutover_backend_login_failures_total{backend=\"legacy\"} 0",
                     "cutover_backend_connections{backend=\"legacy\",role=\"leader\"} 1",
                     "cutover_backend_connections{backend=\"legacy\",role=\"follower\"} 0",
                     "cutover_client_login_refusals_total{sqlstate=\"28P01\"} 1"] {
            #expect(metrics.contains(line + "\n"), "\(line) in \(metrics.split(separator: "\n").filter { $0.contains("cutover_backend") })")
        }
        #expect(try held.scalar("SELECT 1") == "1")
    }

    @Test func clientAndBackendSocketsGetTheConfiguredKeepalive() throws {
        let (p, port, path) = try f.ownProxy("keepalive", server: "tcp_keepidle = 77\ntcp_keepintvl = 7\ntcp_keepcnt = 3\ntcp_user_timeout = 12000")
        defer { stopBackgroundProcess(p) }
        let c = try PQConnection(f.conninfo(port))
        #expect(try c.scalar("SELECT 1") == "1")
        /// The proxy's established TCP sockets whose other end is `port` (`dport`) or whose own end is (`sport`),
        /// as `ss` shows them with their timers.
        func sockets(_ filter: String) throws -> String {
            try runProcess("/usr/bin/ss", ["-tnoHp", "state", "established", filter]).stdout
                .split(separator: "\n").filter { $0.contains("pid=\(p.processIdentifier),") }.joined(separator: "\n")
        }
        // The idle time left counts down from 77 s: 1min17sec at most. (Right after a write the timer shown is
        // the retransmission one until the ACK is in: look again for a moment.)
        for (side, filter) in [("client", "( sport = :\(port) )"), ("backend", "( dport = :\(f.legacy.port) )")] {
            var line = try sockets(filter)
            let deadline = Date().addingTimeInterval(3)
            while !line.contains("timer:(keepalive,") && Date() < deadline { usleep(100_000); line = try sockets(filter) }
            #expect(line.contains("timer:(keepalive,1min1"), "\(side): \(line)")
        }
        // Off: no keepalive timer on new sockets (after a reload).
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "tcp_keepidle = 77", with: "tcp_keepalive = false")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        // Sockets by their addresses (a line's timer counts down between two looks: the whole line is no key).
        func byAddress(_ text: String) -> [String: String] {
            Dictionary(text.split(separator: "\n").map { line in (line.split(separator: " ").dropFirst(2).prefix(2).joined(separator: " "), String(line)) },
                       uniquingKeysWith: { a, _ in a })
        }
        let before = byAddress(try sockets("( sport = :\(port) )"))
        let d = try PQConnection(f.conninfo(port))
        #expect(try d.scalar("SELECT 1") == "1")
        let added = byAddress(try sockets("( sport = :\(port) )")).filter { before[$0.key] == nil }.map(\.value)
        #expect(added.count == 1 && !(added.first?.contains("keepalive") ?? true), "\(added)")
    }

    @Test func aReloadWhoseDivergenceLogCannotBeOpenedChangesNothing() throws {
        let (p, port, path) = try f.ownProxy("reload-whole", server: "divergence_log = \"reload-whole.jsonl\"", rest: ProxyFixture.adminTOML)
        defer { stopBackgroundProcess(p) }
        let console = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        // The new config adds a route, and names a divergence log in a directory that does not exist.
        let config = try String(contentsOfFile: path, encoding: .utf8)
        try (config.replacingOccurrences(of: "divergence_log = \"reload-whole.jsonl\"", with: "divergence_log = \"/nonexistent-dir/d.jsonl\"")
             + "\n[routes.latecomer]\nlegacy = \"legacy\"\nlegacy_schema = \"onboarding\"\nnew = \"legacy\"\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        do {
            try console.query("RELOAD")
            Issue.record("the reload was accepted")
        } catch let e as PQError {
            #expect(e.message.contains("divergence log"), "\(e.message)")
        }
        #expect(try console.query("SHOW ROUTES").allSatisfy { $0[0] != "latecomer" }, "nothing of the refused reload took effect")
        // Fixed, the same reload goes through.
        try (config + "\n[routes.latecomer]\nlegacy = \"legacy\"\nlegacy_schema = \"onboarding\"\nnew = \"legacy\"\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        try console.query("RELOAD")
        #expect(try console.query("SHOW ROUTES").contains { $0[0] == "latecomer" })
    }
}
