// Integration: backend host names. One that does not resolve fails only its own route's logins, with the
// reason; a reload that fixes it is looked up in the background; a name that moves (a failover's DNS switch)
// is followed without a reload or restart.
import Foundation
import Testing

@Suite(.serialized) struct BackendAddressTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    /// Whether this run can give the proxy an /etc/hosts of its own (root, and mount namespaces allowed).
    static let canOverrideHosts: Bool = {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else { return false }
        return (try? runProcess("/usr/bin/unshare", ["-m", "/bin/sh", "-c", "mount --bind /etc/hosts /etc/hosts"]))?.succeeded == true
    }()

    func waitForLog(_ path: String, _ text: String, timeout: TimeInterval = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let log = try? String(contentsOfFile: path, encoding: .utf8), log.contains(text) { return true }
            usleep(100_000)
        }
        return false
    }

    /// The error of a login that must fail, or nil if it succeeded.
    func loginError(_ conninfo: String) -> PQError? {
        do { _ = try PQConnection(conninfo); return nil } catch let e as PQError { return e } catch { return PQError(message: "\(error)") }
    }

    /// `SHOW BACKENDS` rows by backend name.
    func backends(_ port: Int) throws -> [String: [String?]] {
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        return Dictionary(try admin.query("SHOW BACKENDS").map { ($0[0] ?? "", $0) }, uniquingKeysWith: { a, _ in a })
    }

    @Test func anUnresolvableHostFailsOnlyItsRouteWithTheReasonAndAReloadThatFixesItIsPickedUp() throws {
        let ghost = { (host: String) in """
            \(ProxyFixture.adminTOML)
            \(f.backendTOML("ghost", host: host))
            [routes.ghostroute]
            legacy = "ghost"
            legacy_schema = "onboarding"
            new = "ghost"
            """ }
        let (p, port, path) = try f.ownProxy("dns-unresolvable", rest: ghost("nowhere.invalid"))
        defer { stopBackgroundProcess(p) }
        let log = "\(f.directory)/dns-unresolvable.log"
        #expect(waitForLog(log, "backend host lookup failed"), "the failed lookup at start is logged")

        let error = loginError(f.conninfo(port, database: "ghostroute"))
        #expect(error?.message.contains("cannot connect to backend \"ghost\" at nowhere.invalid:\(f.legacy.port)") == true
                && error?.message.contains("could not resolve host name \"nowhere.invalid\"") == true,
                "the client is told which backend and why: \(String(describing: error))")
        let bystander = try PQConnection(f.conninfo(port))
        #expect(try bystander.scalar("SELECT count(*) > 0 FROM candidates") == "t", "other routes are served meanwhile")
        // SHOW BACKENDS: backend, host, port, addresses, resolved_s_ago, lookup, tls, leaders, followers.
        var rows = try backends(port)
        #expect(rows["ghost"]?[3] == "" && rows["ghost"]?[5]?.hasPrefix("failed: ") == true, "the console says why: \(String(describing: rows["ghost"]))")
        #expect(rows["legacy"]?[3] == "127.0.0.1" && rows["legacy"]?[4] == nil && rows["legacy"]?[7] == "1",
                "an IP address needs no lookup; the bystander's session is counted: \(String(describing: rows["legacy"]))")

        // The backend's host is corrected and the config reloaded: the name is looked up off the loop.
        try f.ownConfig(port: port, rest: ghost("localhost")).write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        #expect(waitForLog(log, "backend host resolved"), "the reload's lookup is logged")
        var fixed: PQConnection?
        for _ in 0..<50 where fixed == nil {
            fixed = try? PQConnection(f.conninfo(port, database: "ghostroute"))
            if fixed == nil { usleep(100_000) }
        }
        #expect(try fixed?.scalar("SELECT count(*) > 0 FROM candidates") == "t", "after the reload the route is served")
        rows = try backends(port)
        #expect(rows["ghost"]?[1] == "localhost" && rows["ghost"]?[3]?.contains("127.0.0.1") == true && rows["ghost"]?[5] == "ok"
                && rows["ghost"]?[4] != nil, "the console shows where the name points now: \(String(describing: rows["ghost"]))")
        #expect(try bystander.scalar("SELECT 1") == "1", "a session from before the reload carries on")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aBackendNameThatMovesIsFollowedWithoutAReload() throws {
        // The name first points at an address nothing listens on (the cluster listens on 127.0.0.1 only):
        // the "old primary" after a failover. dns_refresh = 0: only the failed connections make the proxy look again.
        let hosts = "\(f.directory)/dns-hosts"
        try "127.0.0.2 legacy-db.test\n".write(toFile: hosts, atomically: false, encoding: .utf8)
        let (p, port, _) = try f.ownProxy("dns-moves", server: "dns_refresh = 0", legacyHost: "legacy-db.test", hostsFile: hosts)
        defer { stopBackgroundProcess(p) }
        let log = "\(f.directory)/dns-moves.log"

        let refused = loginError(f.conninfo(port))
        #expect(refused?.message.contains("at legacy-db.test:\(f.legacy.port) (127.0.0.2)") == true,
                "the error names the host and the address it resolved to: \(String(describing: refused))")

        // The DNS switch: the name now points at the live server. Edited in place (the bind mount holds the inode).
        let handle = try #require(FileHandle(forWritingAtPath: hosts))
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data("127.0.0.1 legacy-db.test\n".utf8))
        try handle.close()

        var served: PQConnection?
        var attempts = 0
        let deadline = Date().addingTimeInterval(10)
        while served == nil && Date() < deadline {
            attempts += 1
            served = try? PQConnection(f.conninfo(port))
            if served == nil { usleep(200_000) }
        }
        #expect(try served?.scalar("SELECT count(*) > 0 FROM candidates") == "t",
                "the moved name is followed without a reload (\(attempts) attempts)")
        #expect(waitForLog(log, "backend host resolved", timeout: 1))
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("addresses=127.0.0.1") && text.contains("previous=127.0.0.2"), "the move is logged with both addresses")
        #expect(attempts <= 10, "followed within a few seconds of the switch, not at a refresh interval (\(attempts) attempts)")
    }

    /// A proxy whose legacy backend is the host name `name`, resolved through a private hosts file with
    /// `addresses` (in that order: glibc keeps it for addresses of one scope).
    func proxyOnName(_ test: String, _ name: String, _ addresses: [String], server: String = "") throws -> (Process, Int, String) {
        let hosts = "\(f.directory)/\(test)-hosts"
        try addresses.map { "\($0) \(name)\n" }.joined().write(toFile: hosts, atomically: false, encoding: .utf8)
        let (p, port, _) = try f.ownProxy(test, server: server, legacyHost: name, hostsFile: hosts)
        return (p, port, "\(f.directory)/\(test).log")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aLoginFallsBackToTheNamesNextAddressWhenOneRefuses() throws {
        // 127.0.0.2 refuses (the cluster listens on 127.0.0.1 only): a replica gone, or an IPv6 address the
        // server does not listen on. Round robin sends every other login there first.
        let (p, port, log) = try proxyOnName("dns-fallback", "multi-db.test", ["127.0.0.1", "127.0.0.2"])
        defer { stopBackgroundProcess(p) }
        var served = 0
        for attempt in 0..<4 {
            do {
                let c = try PQConnection(f.conninfo(port))
                if try c.scalar("SELECT count(*) > 0 FROM candidates") == "t" { served += 1 }
            } catch {
                Issue.record("login \(attempt) failed: \(error)")
            }
        }
        #expect(served == 4, "every login is served while one address works")
        #expect(waitForLog(log, "backend address failed, trying the next", timeout: 2))
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("address=127.0.0.2") && text.contains("next=127.0.0.1"), "the fallback is logged with both addresses")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aLoginThatFindsNoAddressAnsweringNamesEveryAddressTried() throws {
        let (p, port, _) = try proxyOnName("dns-all-refuse", "dead-db.test", ["127.0.0.2", "127.0.0.3"])
        defer { stopBackgroundProcess(p) }
        let error = loginError(f.conninfo(port))
        let message = error?.message ?? ""
        #expect(message.contains("cannot connect to backend \"legacy\" at dead-db.test:\(f.legacy.port)")
                && message.contains("127.0.0.2") && message.contains("127.0.0.3") && message.contains("tried before"),
                "the error names both addresses: \(message)")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func anAddressThatNeverAnswersGetsConnectTimeoutThenTheNextIsTried() throws {
        // 192.0.2.99 (TEST-NET-1) drops the SYN: a host gone after a failover. connect_timeout = 1.
        let (p, port, log) = try proxyOnName("dns-blackhole", "slow-db.test", ["127.0.0.1", "192.0.2.99"], server: "connect_timeout = 1")
        defer { stopBackgroundProcess(p) }
        var slowest = 0.0
        for attempt in 0..<2 {
            let started = Date()
            do {
                let c = try PQConnection(f.conninfo(port))
                #expect(try c.scalar("SELECT 1") == "1")
            } catch {
                Issue.record("login \(attempt) failed: \(error)")
            }
            slowest = max(slowest, Date().timeIntervalSince(started))
        }
        #expect(slowest >= 0.9 && slowest < 5, "one login waited its connect_timeout on the silent address, then was served (\(slowest) s)")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("address=192.0.2.99") && text.contains("timed out after 1.0 s"), "the timeout and the fallback are logged")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aSilentNameServerDelaysTheStartByOneTimeoutNotOnePerBackend() throws {
        // Three backends whose names only a name server could answer, and it never does (2 s, one attempt):
        // looked up one after another they held the start for 6 s; at once, for 2.
        let hosts = "\(f.directory)/dns-start-hosts", resolv = "\(f.directory)/dns-start-resolv.conf"
        try "127.0.0.1 start-db.test\n".write(toFile: hosts, atomically: false, encoding: .utf8)
        try "nameserver 192.0.2.99\noptions timeout:2 attempts:1\n".write(toFile: resolv, atomically: false, encoding: .utf8)
        let silent = ["slow_a", "slow_b", "slow_c"]
        let started = Date()
        let (p, port, _) = try f.ownProxy("dns-start", rest: silent.map { f.backendTOML($0, host: "\($0.replacingOccurrences(of: "_", with: "-")).test") }
                                            .joined(separator: "\n"), legacyHost: "start-db.test", hostsFile: hosts, resolvConf: resolv)
        defer { stopBackgroundProcess(p) }
        let took = Date().timeIntervalSince(started)
        #expect(took >= 1.5 && took < 5, "listening after \(took) s")
        #expect(try PQConnection(f.conninfo(port)).scalar("SELECT 1") == "1", "the name the hosts file knows is served")
        let log = (try? String(contentsOfFile: "\(f.directory)/dns-start.log", encoding: .utf8)) ?? ""
        for name in silent { #expect(log.contains("backend host lookup failed") && log.contains("backend=\(name)"), "\(name): \(log)") }
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aLookupHangingOnAnUnansweringNameServerDoesNotHoldUpShutdown() throws {
        // The name resolves from the hosts file at start; then it leaves the file, so the next lookup asks a
        // name server that never answers (TEST-NET-1), for 2 × 5 s: a DNS outage during a SIGTERM.
        let hosts = "\(f.directory)/dns-hang-hosts", resolv = "\(f.directory)/dns-hang-resolv.conf"
        try "127.0.0.1 hang-db.test\n".write(toFile: hosts, atomically: false, encoding: .utf8)
        try "nameserver 192.0.2.99\noptions timeout:5 attempts:2\n".write(toFile: resolv, atomically: false, encoding: .utf8)
        let (p, port, _) = try f.ownProxy("dns-hang", server: "dns_refresh = 1", legacyHost: "hang-db.test", hostsFile: hosts, resolvConf: resolv)
        defer { stopBackgroundProcess(p) }
        let log = "\(f.directory)/dns-hang.log"
        let handle = try #require(FileHandle(forWritingAtPath: hosts))
        try handle.truncate(atOffset: 0)
        try handle.close()
        usleep(1_200_000) // past dns_refresh: the next connection starts a lookup (and uses the address known)
        let c = try PQConnection(f.conninfo(port))
        #expect(try c.scalar("SELECT 1") == "1", "the connection does not wait for DNS")
        usleep(300_000) // the lookup is running on the thread pool now
        let started = Date()
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        let took = Date().timeIntervalSince(started)
        #expect(took < 4, "shutdown waited \(took) s for a lookup it cannot cancel")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("a host name lookup was still running at exit") && text.contains("loop_close=-16"),
                "the abandoned lookup is said, and the loop left open: \(text)")
    }

    @Test(.enabled(if: BackendAddressTests.canOverrideHosts, "needs root and mount namespaces for a private /etc/hosts"))
    func aFollowersConnectToASilentAddressMovesOnAfterConnectTimeout() throws {
        // The follower's host name: the new cluster's address and one that drops the SYN. Round robin sends
        // the second session's follower to the silent one first.
        let hosts = "\(f.directory)/dns-follower-hosts"
        try "127.0.0.1 follower-db.test\n192.0.2.99 follower-db.test\n".write(toFile: hosts, atomically: false, encoding: .utf8)
        let rest = ProxyFixture.adminTOML + "\n" + f.dualLegacyRouteTOML("fallbackroute", newHost: "follower-db.test")
        let (p, port, _) = try f.ownProxy("dns-follower", server: "connect_timeout = 1\nfollower_timeout = 3", rest: rest, hostsFile: hosts)
        defer { stopBackgroundProcess(p) }
        let log = "\(f.directory)/dns-follower.log"
        let sessions = try (0..<2).map { _ in try PQConnection(f.conninfo(port, database: "fallbackroute")) }
        for c in sessions { #expect(try c.scalar("SELECT 6 * 7") == "42") }
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        var stats: [String?] = []
        let deadline = Date().addingTimeInterval(2.5) // inside follower_timeout: only a fallback can make it
        repeat {
            usleep(100_000)
            stats = try admin.query("SHOW STATS").first { $0[0] == "fallbackroute" } ?? []
        } while stats.count > 2 && stats[2] != "2" && Date() < deadline
        #expect(stats.count > 2 && stats[2] == "2", "both sessions' statements were compared: \(stats)")
        #expect(try admin.query("SHOW ROUTES").first { $0[0] == "fallbackroute" }?[6] == "yes", "the route stays in sync")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("address=192.0.2.99") && text.contains("next=127.0.0.1"), "the follower's fallback is logged")
    }
}
