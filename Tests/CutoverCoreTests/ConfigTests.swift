// Config parsing: the documented shape loads; every mistake is reported with its key.
import Foundation
import Testing
import CutoverTestSupport
@testable import CutoverCore

let sampleConfig = """
[server]
listen = "127.0.0.1:6432"
max_clients = 50
[[users]]
name = "onboarding_user"
password_env = "ONBOARDING_PASSWORD"
[[users]]
name = "ops"
password = "ops-pw"
admin = true
[backends.legacy]
host = "127.0.0.1"
port = 5433
database = "hexabuilders"
user = "hexabuilders"
password_env = "LEGACY_DB_PASSWORD"
[backends.onboarding]
port = 5434
database = "onboarding"
user = "onboarding_user"
password = "x"
[routes.onboarding]
legacy = "legacy"
legacy_schema = "onboarding"
new = "onboarding"
phase = "legacy"
[routes."*"]
backend = "legacy"
"""

@Suite struct ConfigTests {
    let env = ["ONBOARDING_PASSWORD": "pw1", "LEGACY_DB_PASSWORD": "pw2"]

    @Test func sampleLoadsAndResolves() throws {
        let c = try ConfigLoader.parse(sampleConfig, environment: env)
        #expect(c.server.listenPort == 6432 && c.server.maxClients == 50 && c.server.followerLogins == 2)
        #expect(c.server.dnsRefresh == 30, "backend host names are looked up again after 30 s by default")
        #expect(c.backends["legacy"]?.password == "pw2")
        #expect(c.users["ops"]?.admin == true)
        guard case .route(let t) = c.resolve(database: "onboarding") else { Issue.record("no route"); return }
        #expect(t.leader.name == "legacy" && t.database == "hexabuilders" && t.searchPath == "onboarding" && t.follower == nil)
        guard case .route(let n) = c.resolve(database: "onboarding", phase: .dualNew) else { Issue.record("no route"); return }
        #expect(n.leader.name == "onboarding" && n.searchPath == nil && n.follower?.name == "legacy" && n.followerSearchPath == "onboarding")
        guard case .route(let w) = c.resolve(database: "anything") else { Issue.record("no wildcard"); return }
        #expect(w.leader.name == "legacy" && w.database == "anything" && w.route == nil)
        #expect(c.resolve(database: "cutover") == .admin)
    }

    @Test func everyProblemIsReportedWithItsKey() {
        let bad = """
        [server]
        listen = "nowhere"
        metrics_listen = "127.0.0.1:99999"
        follower_logins = 0
        dns_refresh = -1
        max_clients = 0
        colour = "blue"
        [[users]]
        name = "u"
        password_env = "MISSING"
        [backends.b]
        user = "x"
        [routes.r]
        legacy = "b"
        new = "nope"
        phase = "sideways"
        """
        do {
            _ = try ConfigLoader.parse(bad, environment: [:])
            Issue.record("expected errors")
        } catch let e as ConfigErrors {
            let keys = Set(e.problems.map(\.key))
            #expect(keys.isSuperset(of: ["server.listen", "server.metrics_listen", "server.follower_logins", "server.dns_refresh", "server.max_clients", "server.colour", "users.u.password_env",
                                         "routes.r.new", "routes.r.phase"]))
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func clientTLSNeedsLoadableFilesAndDefaultsToAllowWhenTheyAreGiven() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        let users = "[[users]]\nname = \"u\"\nauth = \"trust\"\n"
        func load(_ server: String) throws -> ServerConfig { try ConfigLoader.parse("[server]\n\(server)\n\(users)", environment: [:]).server }
        func problems(_ server: String) -> [String: String] {
            do { _ = try load(server); return [:] } catch let e as ConfigErrors {
                return Dictionary(e.problems.map { ($0.key, $0.message) }, uniquingKeysWith: { a, _ in a })
            } catch { return ["?": "\(error)"] }
        }
        #expect(try load("").clientTLS == .disable)
        let files = "client_tls_cert_file = \"\(cert.certificate)\"\nclient_tls_key_file = \"\(cert.key)\""
        #expect(try load(files).clientTLS == .allow, "a certificate and key alone turn TLS on")
        #expect(try load(files + "\nclient_tls = \"require\"").clientTLS == .require)
        #expect(try load(files + "\nclient_tls = \"disable\"").clientTLS == .disable)
        #expect(problems("client_tls = \"require\"")["server.client_tls"]?.contains("client_tls_cert_file") == true)
        #expect(problems("client_tls = \"sometimes\"")["server.client_tls"] != nil)
        let missing = problems("client_tls_cert_file = \"\(cert.directory)/none.crt\"\nclient_tls_key_file = \"\(cert.key)\"")
        #expect(missing["server.client_tls_cert_file"]?.contains("none.crt") == true, "check-config names the file it cannot load")
    }

    @Test func everyServerKeyIsListedByItsFileNameAndReloadKeepsTheRestartOnlyOnes() throws {
        // Every setting written with a non-default value comes back under the same key with that value.
        let file = """
            [server]
            listen = "0.0.0.0:7000"
            unix_socket_dir = "/run/cutover"
            max_clients = 7
            max_message_size = 2048
            connect_timeout = 1.5
            auth_timeout = 2
            client_idle_timeout = 3
            idle_transaction_timeout = 3.5
            shutdown_timeout = 4
            write_high_water = 8192
            admin_database = "ops"
            state_file = "/var/lib/cutover/state.json"
            divergence_log = "/var/log/cutover/d.jsonl"
            log_literals = true
            divergence_memory = 5
            divergence_log_limit = 6
            mirror_queue_bytes = 70000
            mirror_queue_statements = 9
            follower_timeout = 0.5
            flip_timeout = 11
            follower_logins = 12
            backend_pool_size = 13
            backend_pool_total = 14
            backend_idle_timeout = 15
            backend_lifetime = 15.5
            dns_refresh = 16
            metrics_listen = "0.0.0.0:9187"
            client_tls = "disable"
            tcp_keepalive = false
            tcp_keepidle = 17
            tcp_keepintvl = 18
            tcp_keepcnt = 19
            tcp_user_timeout = 20000
            """
        let server = try ConfigLoader.parse(file + "\n[[users]]\nname = \"u\"\nauth = \"trust\"\n", environment: [:]).server
        var written: [String: String] = [:]
        for line in file.split(separator: "\n").dropFirst() {
            let kv = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            written[kv[0]] = kv[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        let listed = Dictionary(server.settings.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        for (key, value) in written { #expect(listed[key] == value, "\(key)") }
        #expect(Set(listed.keys).subtracting(written.keys) == ["client_tls_cert_file", "client_tls_key_file", "client_tls_ca_file", "client_tls_crl_file"])
        #expect(ServerConfig.restartOnlyKeys.isSubset(of: Set(listed.keys)))

        var reloaded = server
        reloaded.listenPort = 7001
        reloaded.maxClients = 8
        reloaded.metricsHost = nil
        let pending = reloaded.keepRestartOnlySettings(of: server)
        #expect(pending.count == 2 && pending["listen"] == .some("0.0.0.0:7001") && pending["metrics_listen"] == .some(nil))
        #expect(reloaded.listenPort == 7000 && reloaded.metricsHost == "0.0.0.0" && reloaded.maxClients == 8, "the rest applies")
        var same = server
        #expect(same.keepRestartOnlySettings(of: server).isEmpty)

        // Timeouts are bounded: inf or a huge value would overflow the timers' milliseconds.
        for value in ["inf", "nan", "1e300", "-1", "10000001"] {
            #expect(throws: ConfigErrors.self, "\(value)") {
                try ConfigLoader.parse("[server]\nidle_transaction_timeout = \(value)\n[[users]]\nname = \"u\"\nauth = \"trust\"\n", environment: [:])
            }
        }
    }

    @Test func certUsersNeedClientTLSWithACAFileThatLoads() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        let files = "client_tls_cert_file = \"\(cert.certificate)\"\nclient_tls_key_file = \"\(cert.key)\""
        let certUser = "[[users]]\nname = \"svc\"\nauth = \"cert\"\n"
        func parse(_ server: String) throws -> CutoverConfig { try ConfigLoader.parse("[server]\n\(server)\n\(certUser)", environment: [:]) }
        func problems(_ server: String) -> [String: String] {
            do { _ = try parse(server); return [:] } catch let e as ConfigErrors {
                return Dictionary(e.problems.map { ($0.key, $0.message) }, uniquingKeysWith: { a, _ in a })
            } catch { return ["?": "\(error)"] }
        }
        let ok = try parse(files + "\nclient_tls_ca_file = \"\(cert.certificate)\"")
        #expect(ok.users["svc"]?.auth == .cert && ok.server.clientTLSCAFile == cert.certificate, "no password needed")
        #expect(problems(files)["users.svc.auth"]?.contains("client_tls_ca_file") == true)
        #expect(problems("client_tls_ca_file = \"\(cert.certificate)\"")["users.svc.auth"] != nil, "without client TLS no certificate can arrive")
        let missing = problems(files + "\nclient_tls_ca_file = \"\(cert.directory)/none.pem\"")
        #expect(missing["server.client_tls_ca_file"]?.contains("none.pem") == true, "check-config names the CA file it cannot load")

        // Revocation lists: loaded with their CA, or a problem naming what is wrong with the file.
        let ca = try CertificateAuthority()
        defer { ca.remove() }
        let crl = ca.directory + "/ok.crl"
        try ca.writeRevocationList(to: crl)
        let withCA = files + "\nclient_tls_ca_file = \"\(ca.certificate)\"\n"
        #expect(try parse(withCA + "client_tls_crl_file = \"\(crl)\"").server.clientTLSCRLFile == crl)
        #expect(problems(files + "\nclient_tls_crl_file = \"\(crl)\"")["server.client_tls_crl_file"]?.contains("needs client_tls_ca_file") == true)
        #expect(problems(withCA + "client_tls_crl_file = \"\(ca.directory)/none.crl\"")["server.client_tls_crl_file"]?.contains("none.crl") == true)
        #expect(problems(withCA + "client_tls_crl_file = \"\(ca.certificate)\"")["server.client_tls_crl_file"]?
            .contains("holds no certificate revocation list") == true)
        let damaged = ca.directory + "/damaged.crl"
        let text = try String(contentsOfFile: crl, encoding: .utf8)
        try (text + "-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n").write(toFile: damaged, atomically: true, encoding: .utf8)
        #expect(problems(withCA + "client_tls_crl_file = \"\(damaged)\"")["server.client_tls_crl_file"]?.contains("cannot load") == true,
                "a damaged second list is not skipped")
    }

    @Test func backendTLSDefaultsToPreferAndVerificationNeedsALoadableCA() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        func parse(_ tls: String) throws -> BackendConfig? {
            try ConfigLoader.parse("[[users]]\nname = \"u\"\nauth = \"trust\"\n[backends.b]\nuser = \"x\"\n\(tls)", environment: [:]).backends["b"]
        }
        func problemKeys(_ tls: String) -> [String: String] {
            do { _ = try parse(tls); return [:] } catch let e as ConfigErrors {
                return Dictionary(e.problems.map { ($0.key, $0.message) }, uniquingKeysWith: { a, _ in a })
            } catch { return ["?": "\(error)"] }
        }
        #expect(try parse("")?.tls == .prefer, "libpq's default")
        let full = try parse("tls = \"verify-full\"\ntls_ca_file = \"\(cert.certificate)\"")
        #expect(full?.tls == .verifyFull && full?.tlsCAFile == cert.certificate)
        #expect(problemKeys("tls = \"verify-ca\"")["backends.b.tls"]?.contains("tls_ca_file") == true)
        #expect(problemKeys("tls = \"maybe\"")["backends.b.tls"] != nil)
        let missing = problemKeys("tls = \"verify-ca\"\ntls_ca_file = \"\(cert.directory)/none.pem\"")
        #expect(missing["backends.b.tls_ca_file"]?.contains("none.pem") == true)
    }

    @Test func aSyntaxErrorSaysWhereAndWhat() {
        let problems = Self.problems { try ConfigLoader.parse("[server]\nlisten = \"127.0.0.1:1\nmax_clients = 3\n") }
        #expect(problems.count == 1)
        #expect(problems.first?.key == "line 2, column 22", "\(problems)")
        #expect(problems.first?.message.hasPrefix("TOML syntax error: ") == true && problems.first!.message.contains("string"), "\(problems)")
    }

    @Test func usersAreNamedByTheirNameInProblems() {
        let problems = Self.problems {
            try ConfigLoader.parse("[[users]]\nname = \"svc\"\npassword_env = \"NOPE\"\n[[users]]\nname = \"odd name\"\nauth = \"md5\"\n[[users]]\npassword = \"x\"\n")
        }
        let keys = Set(problems.map(\.key))
        #expect(keys.isSuperset(of: ["users.svc.password_env", "users.\"odd name\"", "users[2].name"]), "\(keys)")
        #expect(!keys.contains { $0.hasPrefix("users[0]") || $0.hasPrefix("users[1]") })
    }

    @Test func relativePathsAreRelativeToTheConfigFilesDirectoryWhereverThatIs() throws {
        #expect(ConfigLoader.directory(ofConfigAt: "cutover.toml", currentDirectory: "/srv/cutover") == "/srv/cutover")
        #expect(ConfigLoader.directory(ofConfigAt: "config/../etc/cutover.toml", currentDirectory: "/srv") == "/srv/etc")
        #expect(ConfigLoader.directory(ofConfigAt: "/etc/cutover/cutover.toml", currentDirectory: "/srv") == "/etc/cutover")
        let c = try ConfigLoader.parse("[server]\nstate_file = \"cutover.state\"\ndivergence_log = \"log/d.jsonl\"\n[[users]]\nname = \"u\"\nauth = \"trust\"\n",
                                       baseDirectory: ConfigLoader.directory(ofConfigAt: "cutover.toml", currentDirectory: "/srv/cutover"))
        #expect(c.server.stateFile == "/srv/cutover/cutover.state" && c.server.divergenceLog == "/srv/cutover/log/d.jsonl")
    }

    @Test func theStateFilesDirectoryMustTakeANewFileAndTheProblemSaysWhyInTheOSsWords() throws {
        var c = CutoverConfig()
        c.server.stateFile = "/nonexistent-cutover-dir/cutover.state"
        let problems = c.problemsBeforeServing()
        #expect(problems == [ConfigProblem("server.state_file", "cannot create a file in /nonexistent-cutover-dir, the directory of "
                                           + "/nonexistent-cutover-dir/cutover.state: No such file or directory")])
        let directory = NSTemporaryDirectory() + "cutover-state-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        c.server.stateFile = directory + "/cutover.state"
        #expect(c.problemsBeforeServing().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty, "the probe file is removed again")
    }

    @Test func aRouteWhoseTwoSidesAreOneDatabaseIsACheckProblem() throws {
        let c = try ConfigLoader.parse("""
            users = [{ name = "u", auth = "trust" }]
            [backends]
            a = { user = "x" }
            a_again = { host = "127.0.0.1", user = "y", database = "x" }
            b = { user = "x", port = 5433 }
            [routes]
            same = { legacy = "a", new = "a" }
            aliased = { legacy = "a", new = "a_again" }
            apart = { legacy = "a", new = "b" }
            schemas_apart = { legacy = "a", legacy_schema = "onboarding", new = "a", new_schema = "onboarding_new" }
            """)
        #expect(c.routesOntoThemselves().map(\.key) == ["routes.aliased.new", "routes.same.new"])
        #expect(c.routesOntoThemselves().first?.message.contains("backends a and a_again, both 127.0.0.1:5432/x") == true)
    }

    @Test func newSchemaIsTheNewSidesSearchPathUnlessItIsPublic() throws {
        let c = try ConfigLoader.parse(sampleConfig.replacingOccurrences(of: "legacy_schema = \"onboarding\"",
                                                                         with: "legacy_schema = \"onboarding\"\nnew_schema = \"onboarding_s\""), environment: env)
        #expect(c.routes["onboarding"]?.newSchema == "onboarding_s")
        guard case .route(let n) = c.resolve(database: "onboarding", phase: .dualNew) else { Issue.record("no route"); return }
        #expect(n.leader.name == "onboarding" && n.searchPath == "onboarding_s" && n.followerSearchPath == "onboarding")
        guard case .route(let l) = c.resolve(database: "onboarding", phase: .dualLegacy) else { Issue.record("no route"); return }
        #expect(l.searchPath == "onboarding" && l.followerSearchPath == "onboarding_s")
        #expect(try ConfigLoader.parse(sampleConfig, environment: env).routes["onboarding"]?.searchPath(on: .new) == nil, "public: left alone")
        let empty = Self.problems { try ConfigLoader.parse(sampleConfig.replacingOccurrences(of: "phase = \"legacy\"", with: "new_schema = \"\""), environment: env) }
        #expect(empty.map(\.key) == ["routes.onboarding.new_schema"])
    }

    /// The problems `body` throws (none when it does not).
    static func problems(_ body: () throws -> Any) -> [ConfigProblem] {
        do { _ = try body(); return [] } catch let e as ConfigErrors { return e.problems } catch { return [ConfigProblem("?", "\(error)")] }
    }

    @Test func phaseLadder() {
        #expect(Phase.legacy.isAdjacent(to: .dualLegacy))
        #expect(!Phase.legacy.isAdjacent(to: .dualNew))
        #expect(Phase.dualNew.leader == .new && Phase.dualNew.follower == .legacy)
    }
}
