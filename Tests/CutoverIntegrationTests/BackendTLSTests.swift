// Integration: the proxy's own connections to PostgreSQL over TLS (each backend's `tls`, as libpq's sslmode).
import CutoverTestSupport
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct BackendTLSTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func eachBackendGetsTheTLSItsModeAsksForAndMirroringRunsOverIt() throws {
        let cert = try SelfSignedCertificate(), other = try SelfSignedCertificate()
        defer { cert.remove(); other.remove() }
        let secure = try PostgresCluster.start(name: "tls-backend")
        defer { secure.destroy() }
        try secure.enableSSL(certificate: cert.certificate, key: cert.key)
        try secure.createRole(name: "svc", password: "svc_pw")
        for db in ["svc", "svc_new"] {
            try secure.createDatabase(name: db, owner: "svc")
            try secure.psql("CREATE TABLE t (id int PRIMARY KEY, v text)", database: db, user: "svc", password: "svc_pw")
        }

        func backend(_ name: String, port: Int, database: String = "svc", tls: String, host: String = "127.0.0.1",
                     ca: String? = nil, user: String = "svc", password: String = "svc_pw") -> String {
            """
            [backends.\(name)]
            host = "\(host)"
            port = \(port)
            database = "\(database)"
            user = "\(user)"
            password = "\(password)"
            tls = "\(tls)"
            \(ca.map { "tls_ca_file = \"\($0)\"" } ?? "")

            """
        }
        func route(_ name: String, legacy: String, new: String? = nil, phase: String = "legacy") -> String {
            "[routes.\(name)]\nlegacy = \"\(legacy)\"\nnew = \"\(new ?? legacy)\"\nphase = \"\(phase)\"\n"
        }
        let port = PostgresCluster.freePort()
        var config = """
            [server]
            listen = "127.0.0.1:\(port)"
            [[users]]
            name = "onboarding_user"
            password = "\(FixtureSecrets.clientPassword)"

            """
        config += backend("b_prefer", port: secure.port, tls: "prefer")
        config += backend("b_require", port: secure.port, tls: "require")
        config += backend("b_full_ip", port: secure.port, tls: "verify-full", ca: cert.certificate)
        config += backend("b_full_name", port: secure.port, database: "svc_new", tls: "verify-full", host: "localhost", ca: cert.certificate)
        config += backend("b_wrong_ca", port: secure.port, tls: "verify-ca", ca: other.certificate)
        config += backend("b_disable", port: secure.port, tls: "disable")
        config += backend("b_clear_only", port: f.legacy.port, database: "hexabuilders", tls: "require",
                          user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        config += backend("b_clear_prefer", port: f.legacy.port, database: "hexabuilders", tls: "prefer",
                          user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        for name in ["prefer", "require", "full_ip", "wrong_ca", "disable", "clear_only", "clear_prefer"] {
            config += route(name, legacy: "b_\(name)")
        }
        config += route("mirrored", legacy: "b_require", new: "b_full_name", phase: "dual-legacy")
        let path = "\(f.directory)/backend-tls.toml"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        let p = try ProxyFixture.startProxy(configPath: path, logPath: "\(f.directory)/backend-tls.log", port: port)
        defer { stopBackgroundProcess(p) }

        let encrypted = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        for (route, expected) in [("prefer", "t"), ("require", "t"), ("full_ip", "t"), ("disable", "f"), ("clear_prefer", "f")] {
            let c = try PQConnection(f.conninfo(port, database: route))
            #expect(try c.scalar(encrypted) == expected, "route \(route)")
        }
        for (route, reason) in [("wrong_ca", "certificate verify failed"), ("clear_only", "does not accept TLS")] {
            do {
                _ = try PQConnection(f.conninfo(port, database: route))
                Issue.record("route \(route) connected")
            } catch let e as PQError {
                #expect(e.message.contains("backend \"b_\(route)\"") && e.message.contains(reason), "\(e.message)")
            }
        }

        // dual-legacy: the follower (verify-full by host name) gets every write over its own TLS connection.
        let c = try PQConnection(f.conninfo(port, database: "mirrored"))
        try c.query("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g")
        try c.query("UPDATE t SET v = v || 'y' WHERE id % 2 = 0")
        var copied: String?
        for _ in 0..<50 {
            copied = try secure.psql("SELECT count(*) FILTER (WHERE v LIKE '%y') || '/' || count(*) FROM t",
                                     database: "svc_new", user: "svc", password: "svc_pw")
            if copied == "1000/2000" { break }
            usleep(100_000)
        }
        #expect(copied == "1000/2000")
        let followerTLS = try secure.psql("""
            SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
            WHERE a.datname = 'svc_new' AND a.usename = 'svc' AND s.ssl
            """)
        #expect(followerTLS == "1", "the follower's connection is encrypted")
        #expect(try c.scalar("SELECT count(*) FROM t") == "2000")
    }
}
