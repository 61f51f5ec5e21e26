// Integration: clients that encrypt their connection to the proxy (libpq's sslmode), and clients that get it wrong.
import CLibPQ
import CutoverTestSupport
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct ClientTLSTests {
    let f: ProxyFixture
    let certificate: SelfSignedCertificate
    init() throws {
        f = try ProxyFixture.shared()
        certificate = try SelfSignedCertificate()
    }

    func tlsProxy(_ name: String, mode: String) throws -> (Process, Int, String) {
        try f.ownProxy(name, server: """
            client_tls = "\(mode)"
            client_tls_cert_file = "\(certificate.certificate)"
            client_tls_key_file = "\(certificate.key)"
            """, rest: """
            [[users]]
            name = "ops"
            password = "\(FixtureSecrets.adminPassword)"
            admin = true
            [[users]]
            name = "trust_user"
            auth = "trust"
            """)
    }

    /// A client that opens with the TLS handshake itself (PostgreSQL 17's sslnegotiation=direct; this
    /// machine's libpq is 15), offering ALPN "postgresql" or not, then runs one query.
    static let directTLSClient = #"""
        import socket, ssl, struct, sys
        port, alpn = int(sys.argv[1]), sys.argv[2] == "alpn"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        if alpn: ctx.set_alpn_protocols(["postgresql"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        print("ALPN", s.selected_alpn_protocol(), flush=True)
        def send(kind, body): s.sendall(kind + struct.pack("!I", len(body) + 4) + body)
        def read():
            def exactly(n):
                b = b""
                while len(b) < n:
                    c = s.recv(n - len(b))
                    if not c: print("EOF"); sys.exit(3)
                    b += c
                return b
            h = exactly(5); return h[:1], exactly(struct.unpack("!I", h[1:])[0] - 4)
        send(b"", struct.pack("!I", 196608) + b"user\0trust_user\0database\0onboarding\0\0")
        while (m := read())[0] != b"Z":
            if m[0] == b"E": print("ERROR", m[1]); sys.exit(2)
        send(b"Q", b"SELECT current_schema()\0")
        while (m := read())[0] != b"Z":
            if m[0] == b"D": print("ROW", m[1][6:].decode())
        """#

    @Test func aClientOpeningWithTLSDirectlyIsServedWithALPNAndRefusedWithout() throws {
        let (p, port, path) = try tlsProxy("tls-direct", mode: "require")
        defer { stopBackgroundProcess(p); certificate.remove() }
        let direct = try runProcess("python3", ["-c", Self.directTLSClient, "\(port)", "alpn"])
        #expect(direct.status == 0 && direct.stdout.contains("ALPN postgresql") && direct.stdout.contains("ROW onboarding"),
                "\(direct.stdout)\(direct.stderr)")
        let withoutALPN = try runProcess("python3", ["-c", Self.directTLSClient, "\(port)", "none"])
        #expect(withoutALPN.status != 0 && !withoutALPN.stdout.contains("ROW"), "\(withoutALPN.stdout)")
        usleep(100_000)
        let log = try String(contentsOfFile: path.replacingOccurrences(of: ".toml", with: ".log"), encoding: .utf8)
        #expect(log.contains("without the ALPN protocol"))
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=require")).isOK, "the SSLRequest way still works")
    }

    static let sslRequest: [UInt8] = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F]

    @Test func requireServesEncryptedClientsRefusesClearTextOnesAndStillPassesCancels() throws {
        let (p, port, _) = try tlsProxy("tls-require", mode: "require")
        defer { stopBackgroundProcess(p); certificate.remove() }

        // The server's certificate verifies against itself as CA, for the address the client dialled, and the
        // SCRAM login is bound to the TLS channel (SCRAM-SHA-256-PLUS, tls-server-end-point).
        let c = try PQConnection(f.conninfo(port, extra: "sslmode=verify-full sslrootcert=\(certificate.certificate) channel_binding=require"))
        #expect(PQsslInUse(c.conn) == 1)
        #expect(String(cString: PQsslAttribute(c.conn, "protocol")) == "TLSv1.3")
        #expect(try c.scalar("SELECT count(*) FROM candidates") == "10")
        // Several TLS records each way: a 4 MB result and a 1 MB parameter.
        let rows = try c.query("SELECT repeat(md5(g::text), 32) FROM generate_series(1, 4000) g")
        #expect(rows.count == 4000 && rows.allSatisfy { $0[0]?.count == 1024 })
        let big = String(repeating: "0123456789abcdef", count: 65536)
        #expect(try c.query("SELECT length($1)", [big]).first?.first == "\(big.count)")

        // The admin console shows the session's protocol and cipher.
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword,
                                                extra: "sslmode=require"))
        let sessions = try admin.query("SHOW SESSIONS")
        #expect(sessions.contains { $0[1] == "onboarding" && ($0.last??.hasPrefix("TLSv1.3 TLS_") ?? false) })

        // A cancel arrives on its own clear-text connection (libpq 15's PQcancel) and must still get through.
        let (state, _) = c.cancelAfter(0.3, running: "SELECT pg_sleep(20)")
        #expect(state == "57014")

        do {
            _ = try PQConnection(f.conninfo(port, extra: "sslmode=disable"))
            Issue.record("a clear-text client got in under client_tls = require")
        } catch let e as PQError {
            #expect(e.message.contains("the proxy accepts only encrypted connections"), "\(e.message)")
        }
        #expect(try c.scalar("SELECT 1") == "1", "the encrypted session carries on")
    }

    @Test func allowServesBothAndPrefersTLSWhenTheClientDoes() throws {
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: certificate.key)
        let (p, port, path) = try tlsProxy("tls-allow", mode: "allow")
        let log = try String(contentsOfFile: path.replacingOccurrences(of: ".toml", with: ".log"), encoding: .utf8)
        #expect(log.contains("client TLS key file is readable by other users"), "a world-readable key is warned about")
        defer { stopBackgroundProcess(p); certificate.remove() }
        let encrypted = try PQConnection(f.conninfo(port, extra: "sslmode=prefer"))
        let clear = try PQConnection(f.conninfo(port, extra: "sslmode=disable"))
        #expect(PQsslInUse(encrypted.conn) == 1 && PQsslInUse(clear.conn) == 0)
        #expect(try encrypted.scalar("SELECT current_schema()") == "onboarding")
        #expect(try clear.scalar("SELECT current_schema()") == "onboarding")
        // psql through TLS, as an operator would run it.
        let psql = try runProcess("psql", ["-X", "-At", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                                           f.conninfo(port, extra: "sslmode=require")])
        #expect(psql.status == 0, "\(psql.stderr)")
        #expect(psql.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "f",
                "the proxy's own link to PostgreSQL is clear text; only the client side is encrypted")
    }

    @Test func clearTextAfterTheSSLRequestAndABrokenHandshakeHarmOnlyTheirOwnConnection() throws {
        let (p, port, path) = try tlsProxy("tls-bad", mode: "require")
        defer { stopBackgroundProcess(p); certificate.remove() }
        let bystander = try PQConnection(f.conninfo(port, extra: "sslmode=require"))

        // A StartupMessage sent in the same packet as the SSLRequest, before the answer: refused in clear
        // text, without an 'S' (an injection before the handshake would otherwise be read as encrypted).
        let stuffed = try RawClient(port: port)
        var startup: [UInt8] = [0, 3, 0, 0] + Array("user\0onboarding_user\0database\0onboarding\0\0".utf8)
        startup = withUnsafeBytes(of: UInt32(startup.count + 4).bigEndian, Array.init) + startup
        stuffed.send(Self.sslRequest + startup)
        let (answer, closed) = stuffed.readUntilClosed()
        #expect(closed && answer.first == UInt8(ascii: "E") && RawClient.errorCode(in: answer) == "08P01")

        // An 'S', then bytes that are not a ClientHello: the connection is dropped and the log says why.
        let garbage = try RawClient(port: port)
        garbage.send(Self.sslRequest)
        var s = [UInt8](repeating: 0, count: 1)
        #expect(recv(garbage.fd, &s, 1, 0) == 1 && s[0] == UInt8(ascii: "S"))
        garbage.send(startup)
        let (_, garbageClosed) = garbage.readUntilClosed()
        #expect(garbageClosed)
        usleep(100_000)
        let log = try String(contentsOfFile: path.replacingOccurrences(of: ".toml", with: ".log"), encoding: .utf8)
        #expect(log.contains("client TLS failed"), "the log names the failed handshake")

        #expect(try bystander.scalar("SELECT count(*) FROM candidates") == "10")
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=require")).isOK)
    }

    @Test func aReloadServesNewSessionsWithTheNewCertificateAndKeepsTheOldOneWhenTheNewFilesAreBroken() throws {
        let (p, port, _) = try tlsProxy("tls-reload", mode: "require")
        defer { stopBackgroundProcess(p); certificate.remove() }
        let before = try PQConnection(f.conninfo(port, extra: "sslmode=verify-full sslrootcert=\(certificate.certificate)"))
        // The files are replaced by another certificate (a renewal) and the proxy reloads.
        let renewed = try SelfSignedCertificate()
        defer { renewed.remove() }
        let oldCert = try Data(contentsOf: URL(fileURLWithPath: certificate.certificate))
        for (from, to) in [(renewed.certificate, certificate.certificate), (renewed.key, certificate.key)] {
            try FileManager.default.removeItem(atPath: to)
            try FileManager.default.copyItem(atPath: from, toPath: to)
        }
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=verify-full sslrootcert=\(renewed.certificate)")).isOK,
                "new sessions get the renewed certificate")
        try oldCert.write(to: URL(fileURLWithPath: "\(renewed.directory)/old.crt"))
        #expect(throws: PQError.self, "and no longer the old one") {
            try PQConnection(f.conninfo(port, extra: "sslmode=verify-full sslrootcert=\(renewed.directory)/old.crt"))
        }
        #expect(try before.scalar("SELECT 1") == "1", "a session started before the reload carries on")
        // A broken key makes the reload fail as a whole (check-config's rule): the renewed certificate stays.
        try "not a key".write(toFile: certificate.key, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=verify-full sslrootcert=\(renewed.certificate)")).isOK)
    }

    /// A proxy of the test's own with client TLS asking for certificates from the CAs in `caFile`, and a
    /// `cert` user `cert_user`.
    func certificateProxy(_ name: String, caFile: String, server: String = "") throws -> (Process, Int, String) {
        try f.ownProxy(name, server: """
            client_tls = "allow"
            client_tls_cert_file = "\(certificate.certificate)"
            client_tls_key_file = "\(certificate.key)"
            client_tls_ca_file = "\(caFile)"
            \(server)
            """, rest: """
            [[users]]
            name = "cert_user"
            auth = "cert"
            """)
    }

    @Test func aCertUserLogsInWithACertificateFromTheCAAndNothingElseLetsItIn() throws {
        let ca = try CertificateAuthority(), stranger = try CertificateAuthority(name: "Another CA")
        defer { ca.remove(); stranger.remove(); certificate.remove() }
        let (p, port, path) = try certificateProxy("tls-cert-auth", caFile: ca.certificate)
        defer { stopBackgroundProcess(p) }
        func login(_ extra: String) -> (PQConnection?, String) {
            do { return (try PQConnection(f.conninfo(port, user: "cert_user", password: "", extra: extra)), "") } catch let e as PQError {
                return (nil, e.message)
            } catch { return (nil, "\(error)") }
        }
        let own = try ca.issue(commonName: "cert_user")
        let (served, error) = login("sslmode=require sslcert=\(own.certificate) sslkey=\(own.key)")
        #expect(try served?.scalar("SELECT current_schema()") == "onboarding", "the certificate is the proof: \(error)")

        let someoneElse = try ca.issue(commonName: "onboarding_user")
        let (_, wrongName) = login("sslmode=require sslcert=\(someoneElse.certificate) sslkey=\(someoneElse.key)")
        #expect(wrongName.contains("certificate authentication failed for user \"cert_user\""), "\(wrongName)")
        let (_, noCertificate) = login("sslmode=require sslcert=\(ca.directory)/none.crt")
        #expect(noCertificate.contains("connection requires a valid client certificate"), "\(noCertificate)")
        let (_, clearText) = login("sslmode=disable")
        #expect(clearText.contains("connection requires a valid client certificate"), "\(clearText)")
        // A certificate from a CA the proxy does not trust fails the TLS handshake itself.
        let forged = try stranger.issue(commonName: "cert_user")
        let (forgedIn, untrusted) = login("sslmode=require sslcert=\(forged.certificate) sslkey=\(forged.key)")
        #expect(forgedIn == nil && untrusted.lowercased().contains("unknown ca"), "\(untrusted)")
        usleep(100_000)
        let log = try String(contentsOfFile: path.replacingOccurrences(of: ".toml", with: ".log"), encoding: .utf8)
        #expect(log.contains("client TLS failed"), "the refused handshake is logged")

        // Password users on the same proxy are asked for no certificate, over TLS or not.
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=require")).isOK)
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=disable")).isOK)
        #expect(try served?.scalar("SELECT 1") == "1", "the certificate session carries on")
    }

    @Test func aRevokedCertificateIsRefusedOnceTheRevocationListNamesItAndAReloadReadsANewList() throws {
        let ca = try CertificateAuthority(), unlisted = try CertificateAuthority(name: "A CA without a list")
        defer { ca.remove(); unlisted.remove(); certificate.remove() }
        let crl = ca.directory + "/clients.crl"
        try ca.writeRevocationList(to: crl)
        // Both CAs are trusted, only the first has a revocation list here.
        let bundle = ca.directory + "/bundle.crt"
        try (String(contentsOfFile: ca.certificate, encoding: .utf8) + String(contentsOfFile: unlisted.certificate, encoding: .utf8))
            .write(toFile: bundle, atomically: true, encoding: .utf8)
        let (p, port, path) = try certificateProxy("tls-cert-crl", caFile: bundle, server: "client_tls_crl_file = \"\(crl)\"")
        defer { stopBackgroundProcess(p) }
        func login(_ c: (certificate: String, key: String)) -> String {
            do { return try PQConnection(f.conninfo(port, user: "cert_user", password: "", extra: "sslmode=require sslcert=\(c.certificate) sslkey=\(c.key)"))
                    .scalar("SELECT current_user") ?? "" } catch let e as PQError { return e.message } catch { return "\(error)" }
        }
        let kept = try ca.issue(commonName: "cert_user"), lost = try ca.issue(commonName: "cert_user")
        #expect(login(kept) == "hexabuilders" && login(lost) == "hexabuilders", "a list that names neither lets both in")
        // A trusted CA with no list here: its certificates cannot be checked, so they are refused (CRL_CHECK_ALL).
        let unchecked = login(try unlisted.issue(commonName: "cert_user"))
        #expect(unchecked != "hexabuilders" && unchecked.lowercased().contains("ssl"), "\(unchecked)")

        // The certificate is revoked: a new list in the same file, read at the reload.
        try ca.writeRevocationList(to: crl, revoked: [lost.certificate])
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        let refused = login(lost)
        #expect(refused.lowercased().contains("certificate revoked"), "\(refused)")
        #expect(login(kept) == "hexabuilders")
        #expect(try PQConnection(f.conninfo(port, extra: "sslmode=require")).isOK, "password users are not asked for a certificate")

        // A file that holds no list (here a certificate) is a config problem, and a reload with it is refused whole.
        try FileManager.default.removeItem(atPath: crl)
        try FileManager.default.copyItem(atPath: ca.certificate, toPath: crl)
        let check = try f.cli(["check-config", "--config", path])
        #expect(check.status == 1 && check.stdout.contains("server.client_tls_crl_file") && check.stdout.contains("holds no certificate revocation list"),
                "\(check.stdout)")
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(login(lost).lowercased().contains("certificate revoked"), "the previous list stays in force")
        #expect(login(kept) == "hexabuilders")
        let log = try String(contentsOfFile: path.replacingOccurrences(of: ".toml", with: ".log"), encoding: .utf8)
        #expect(log.contains("reload failed"))
    }
}
