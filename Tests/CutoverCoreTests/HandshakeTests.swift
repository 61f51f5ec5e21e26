// Session start as transcripts: client startup and authentication, backend login. No sockets.
import Testing
import CutoverProtocol
@testable import CutoverCore

private func startupBody(_ params: [(String, String)]) -> ArraySlice<UInt8> {
    var w = ByteWriter()
    StartupPacket.startup(StartupMessage(parameters: params)).encode(into: &w)
    return w.bytes[4...]
}

private func messages(_ bytes: [UInt8]) throws -> [BackendMessage] {
    var f = MessageFramer()
    f.append(bytes)
    var out: [BackendMessage] = []
    while let m = try f.next() { out.append(try BackendMessage.decode(id: m.id!, body: m.body)) }
    return out
}

private func passwordBody(_ m: FrontendMessage) -> ArraySlice<UInt8> {
    var w = ByteWriter(); m.encode(into: &w); return w.bytes[5...]
}

@Suite struct ClientHandshakeTests {
    let config = try! ConfigLoader.parse(sampleConfig, environment: ["ONBOARDING_PASSWORD": "pw1", "LEGACY_DB_PASSWORD": "pw2"])

    func scramLogin(password: String, user: String = "onboarding_user", database: String = "onboarding",
                    config: CutoverConfig? = nil) throws -> ClientHandshake.Action {
        var h = ClientHandshake(config: config ?? self.config)
        guard case .send(let offer) = h.startupPacketReceived(startupBody([("user", user), ("database", database)])) else {
            Issue.record("expected SASL offer"); return .wait
        }
        #expect(try messages(offer) == [.authentication(.sasl(mechanisms: ["SCRAM-SHA-256"]))])
        var client = SCRAMClient(password: password)
        guard case .send(let cont) = h.passwordMessageReceived(passwordBody(.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: client.clientFirst()))),
              case .authentication(.saslContinue(let serverFirst)) = try messages(cont).first else {
            Issue.record("expected SASLContinue"); return .wait
        }
        let final = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword(password, salt: $0, iterations: $1) }
        return h.passwordMessageReceived(passwordBody(.saslResponse(data: final)))
    }

    @Test func sslIsRefusedAndStartupContinues() {
        var h = ClientHandshake(config: config)
        var w = ByteWriter(); StartupPacket.sslRequest.encode(into: &w)
        #expect(h.startupPacketReceived(w.bytes[4...]) == .send([0x4E]))
        #expect(h.expectsUntyped)
    }

    @Test func oneSSLRequestAndOneGSSENCRequestThenTheStartupPacket() {
        var h = ClientHandshake(config: config)
        #expect(h.startupPacketReceived(packet(.gssEncRequest)) == .send([0x4E]))
        #expect(h.startupPacketReceived(packet(.sslRequest)) == .send([0x4E]))
        // A client looping on them (100 000 were answered) gets 08P01.
        guard case .fail(let e) = h.startupPacketReceived(packet(.sslRequest)) else { Issue.record("a second SSLRequest was answered"); return }
        #expect(e.sqlState == "08P01" && e.message?.contains("twice") == true, "\(e.message ?? "")")
        var g = ClientHandshake(config: config)
        _ = g.startupPacketReceived(packet(.gssEncRequest))
        guard case .fail(let f) = g.startupPacketReceived(packet(.gssEncRequest)) else { Issue.record("a second GSSENCRequest was answered"); return }
        #expect(f.sqlState == "08P01")
    }

    func packet(_ p: StartupPacket) -> ArraySlice<UInt8> {
        var w = ByteWriter(); p.encode(into: &w); return w.bytes[4...]
    }

    func config(tls: ClientTLSMode) -> CutoverConfig {
        var c = config
        c.server.clientTLS = tls
        return c
    }

    @Test func withTLSOnSSLRequestStartsTLSOnceAndGSSIsStillRefused() {
        var h = ClientHandshake(config: config(tls: .allow))
        #expect(h.startupPacketReceived(packet(.gssEncRequest)) == .send([0x4E]))
        #expect(h.startupPacketReceived(packet(.sslRequest)) == .startTLS)
        #expect(h.tlsStarted && h.expectsUntyped, "the startup packet comes next, encrypted")
        guard case .fail(let e) = h.startupPacketReceived(packet(.sslRequest)) else { Issue.record("a second SSLRequest was accepted"); return }
        #expect(e.sqlState == "08P01")
    }

    @Test func allowServesClearTextClientsAndRequireRefusesThemWith28000() {
        let startup = startupBody([("user", "onboarding_user"), ("database", "onboarding")])
        var allow = ClientHandshake(config: config(tls: .allow))
        guard case .send = allow.startupPacketReceived(startup) else { Issue.record("allow refused a clear-text client"); return }
        var require = ClientHandshake(config: config(tls: .require))
        guard case .fail(let e) = require.startupPacketReceived(startup) else { Issue.record("require let a clear-text client in"); return }
        #expect(e.sqlState == "28000" && e.severity == "FATAL")
        #expect(e[0x48]?.contains("sslmode=require") == true, "the hint says how to connect")
        var encrypted = ClientHandshake(config: config(tls: .require))
        #expect(encrypted.startupPacketReceived(packet(.sslRequest)) == .startTLS)
        guard case .send = encrypted.startupPacketReceived(startup) else { Issue.record("require refused an encrypted client"); return }
        // Cancel requests come on their own clear-text connection (libpq's PQcancel), even under require.
        var cancel = ClientHandshake(config: config(tls: .require))
        #expect(cancel.startupPacketReceived(packet(.cancel(CancelRequest(processID: 1, secretKey: 2)))) == .cancel(CancelRequest(processID: 1, secretKey: 2)))
    }

    @Test func aUnixSocketClientIsNeitherOfferedNorRequiredTLS() {
        let startup = startupBody([("user", "onboarding_user"), ("database", "onboarding")])
        var local = ClientHandshake(config: config(tls: .require))
        local.isLocal = true
        #expect(local.startupPacketReceived(packet(.sslRequest)) == .send([0x4E]), "answered N, as PostgreSQL answers on its socket")
        guard case .send = local.startupPacketReceived(startup) else { Issue.record("require refused a Unix-socket client"); return }
        #expect(!local.tlsStarted)
    }

    @Test func aCertUserIsAuthenticatedByTheVerifiedCertificatesCommonNameAlone() {
        var c = config(tls: .allow)
        c.users["cert_user"] = UserConfig(name: "cert_user", auth: .cert, password: nil)
        let startup = startupBody([("user", "cert_user"), ("database", "onboarding")])
        func attempt(tls: Bool, commonName: String?) -> ClientHandshake.Action {
            var h = ClientHandshake(config: c)
            if tls { #expect(h.startupPacketReceived(packet(.sslRequest)) == .startTLS) }
            h.clientCertificateName = commonName
            return h.startupPacketReceived(startup)
        }
        guard case .connect(_, _, let user) = attempt(tls: true, commonName: "cert_user") else { Issue.record("the right certificate was refused"); return }
        #expect(user == "cert_user", "no password exchange: the certificate is the proof")
        guard case .fail(let none) = attempt(tls: true, commonName: nil) else { Issue.record("no certificate was accepted"); return }
        #expect(none.sqlState == "28000" && none.message == "connection requires a valid client certificate")
        guard case .fail(let clear) = attempt(tls: false, commonName: "cert_user") else { Issue.record("clear text was accepted"); return }
        #expect(clear.sqlState == "28000", "a name without TLS proves nothing")
        guard case .fail(let other) = attempt(tls: true, commonName: "onboarding_user") else { Issue.record("another user's certificate was accepted"); return }
        #expect(other.sqlState == "28000" && other.message == "certificate authentication failed for user \"cert_user\"")
        #expect(other[0x44]?.contains("onboarding_user") == true, "the detail names the certificate's CN")
        // A password user is not let in by a certificate alone.
        var h = ClientHandshake(config: c)
        _ = h.startupPacketReceived(packet(.sslRequest))
        h.clientCertificateName = "onboarding_user"
        guard case .send = h.startupPacketReceived(startupBody([("user", "onboarding_user"), ("database", "onboarding")])) else {
            Issue.record("a SCRAM user skipped the password"); return
        }
    }

    @Test func rightPasswordConnectsToTheRoute() throws {
        guard case .connect(let target, let startup, let user) = try scramLogin(password: "pw1") else { Issue.record("no connect"); return }
        #expect(target.leader.name == "legacy" && target.searchPath == "onboarding" && user == "onboarding_user")
        #expect(startup.database == "onboarding")
    }

    @Test func wrongPasswordIs28P01() throws {
        guard case .fail(let e) = try scramLogin(password: "nope") else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "28P01")
    }

    @Test func aUserScopedToRoutesIsRefusedOthersAfterAuthentication() throws {
        var c = config
        c.users["onboarding_user"]?.routes = ["*"]
        guard case .connect = try scramLogin(password: "pw1", database: "anything", config: c) else { Issue.record("expected the wildcard"); return }
        guard case .fail(let e) = try scramLogin(password: "pw1", database: "onboarding", config: c) else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "42501" && e.message == "permission denied for database \"onboarding\"")
        c.users["onboarding_user"]?.routes = ["onboarding"]
        guard case .connect = try scramLogin(password: "pw1", database: "onboarding", config: c) else { Issue.record("expected the route"); return }
        guard case .fail(let w) = try scramLogin(password: "pw1", database: "anything", config: c) else { Issue.record("expected failure"); return }
        #expect(w.sqlState == "42501", "the wildcard route too, unless \"*\" is listed")
        guard case .fail(let wrong) = try scramLogin(password: "no", database: "onboarding", config: c) else { Issue.record("expected failure"); return }
        #expect(wrong.sqlState == "28P01", "without the password, nothing about the route")
        // The config names only routes it has.
        #expect(throws: ConfigErrors.self) {
            try ConfigLoader.parse("[[users]]\nname = \"u\"\nauth = \"trust\"\nroutes = [\"nowhere\"]\n", environment: [:])
        }
        let ok = try ConfigLoader.parse("""
            [[users]]
            name = "u"
            auth = "trust"
            routes = ["r"]
            [backends.b]
            user = "x"
            [routes.r]
            legacy = "b"
            new = "b"
            """, environment: [:])
        #expect(ok.users["u"]?.routes == ["r"])
    }

    @Test func anUnsupportedSASLMechanismIsAProtocolViolation() throws {
        var h = ClientHandshake(config: config)
        _ = h.startupPacketReceived(startupBody([("user", "onboarding_user"), ("database", "onboarding")]))
        guard case .fail(let e) = h.passwordMessageReceived(passwordBody(.saslInitialResponse(mechanism: "SCRAM-SHA-1", data: Array("n,,n=,r=abc".utf8)))) else {
            Issue.record("expected failure"); return
        }
        #expect(e.sqlState == "08P01" && e.message == "SASL mechanism SCRAM-SHA-1 is not supported; use SCRAM-SHA-256", "as PostgreSQL")
    }

    @Test func unknownUserLooksLikeAWrongPassword() throws {
        guard case .fail(let e) = try scramLogin(password: "pw1", user: "mallory") else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "28P01")
        // As a known user's, an unknown user's salt is the same at every attempt (a fresh random salt would
        // tell them apart in two tries), and no key derivation runs for it.
        func serverFirst(_ user: String) throws -> String {
            var h = ClientHandshake(config: config)
            _ = h.startupPacketReceived(startupBody([("user", user), ("database", "onboarding")]))
            var client = SCRAMClient(password: "x")
            guard case .send(let cont) = h.passwordMessageReceived(passwordBody(.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: client.clientFirst()))),
                  case .authentication(.saslContinue(let first)) = try messages(cont).first else { return "" }
            return String(String(decoding: first, as: UTF8.self).split(separator: ",")[1])
        }
        #expect(try serverFirst("mallory") == serverFirst("mallory") && serverFirst("onboarding_user") == serverFirst("onboarding_user"))
        #expect(try serverFirst("mallory") != serverFirst("trudy"))
        #expect(SCRAMVerifier.mock(user: "mallory") == SCRAMVerifier.mock(user: "mallory"))
        #expect(SCRAMVerifier.mock(user: "mallory", secret: [1]) != SCRAMVerifier.mock(user: "mallory", secret: [2]), "a secret per process")
    }

    @Test func unknownDatabaseIs3D000WithoutAWildcardButOnlyAfterAuthentication() throws {
        var c = config
        c.wildcardBackend = nil
        // Without the password nobody learns whether a route exists: the same 28P01 as for a known one.
        guard case .fail(let wrong) = try scramLogin(password: "not it", database: "nope", config: c) else { Issue.record("expected failure"); return }
        #expect(wrong.sqlState == "28P01")
        guard case .fail(let e) = try scramLogin(password: "pw1", database: "nope", config: c) else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "3D000")
    }

    @Test func adminDatabaseNeedsAnAdminUser() throws {
        guard case .fail(let e) = try scramLogin(password: "pw1", database: "cutover") else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "42501")
    }

    @Test func cancelRequestIsPassedOn() {
        var h = ClientHandshake(config: config)
        var w = ByteWriter(); StartupPacket.cancel(CancelRequest(processID: 1, secretKey: 2)).encode(into: &w)
        #expect(h.startupPacketReceived(w.bytes[4...]) == .cancel(CancelRequest(processID: 1, secretKey: 2)))
    }

    @Test func badProtocolVersionIs08P01() {
        var h = ClientHandshake(config: config)
        var w = ByteWriter(); w.beginMessage(nil); w.writeInt32(0x0002_0000); w.writeUInt8(0); w.endMessage()
        guard case .fail(let e) = h.startupPacketReceived(w.bytes[4...]) else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "08P01")
    }
}

@Suite struct BackendHandshakeTests {
    let backend = BackendConfig(name: "legacy", host: "127.0.0.1", port: 5433, database: "hexabuilders", user: "hexabuilders", password: "pw")

    @Test func startupCarriesClientParametersAndSearchPath() throws {
        let h = BackendHandshake(backend: backend)
        let client = StartupMessage(parameters: [("user", "svc"), ("database", "onboarding"), ("application_name", "app"),
                                                 ("options", "-c geqo=off"), ("search_path", "evil")])
        let bytes = h.startupPacket(client: client, database: "hexabuilders", searchPath: "onboarding")
        guard case .startup(let s) = try StartupPacket.decode(body: bytes[4...]) else { Issue.record("not startup"); return }
        #expect(s.parameters.map(\.0) == ["user", "database", "application_name", "options", "search_path"])
        #expect(s["user"] == "hexabuilders" && s["database"] == "hexabuilders" && s["search_path"] == "onboarding")
        #expect(s["options"] == "-c geqo=off")
    }

    @Test(arguments: [(["SCRAM-SHA-256"], false, "SCRAM-SHA-256"), (["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], false, "SCRAM-SHA-256"),
                      (["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], true, "SCRAM-SHA-256-PLUS"), (["SCRAM-SHA-256"], true, "SCRAM-SHA-256")])
    func scramLoginTranscript(offered: [String], onTLS: Bool, chosen: String) throws {
        // On TLS the backend's certificate hash is known, and the login binds to it when the backend offers PLUS.
        let endPoint = onTLS ? Crypto.sha256(Array("backend certificate".utf8)) : nil
        var h = BackendHandshake(backend: backend)
        h.channelBinding = endPoint
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "pw"), channelBinding: offered.count > 1 ? endPoint : nil)
        guard case .send(let initial) = h.received(.authentication(.sasl(mechanisms: offered))) else { Issue.record("no initial"); return }
        var f = MessageFramer(); f.append(initial)
        let m1 = try FrontendMessage.decodePassword(body: try f.next()!.body, as: .saslInitial)
        guard case .saslInitialResponse(let mechanism, let data) = m1 else { Issue.record("bad initial"); return }
        #expect(mechanism == chosen)
        let serverFirst = try server.receiveClientFirst(mechanism: mechanism, data: data)
        guard case .send(let response) = h.received(.authentication(.saslContinue(data: serverFirst))) else { Issue.record("no response"); return }
        f.append(response)
        guard case .saslResponse(let final) = try FrontendMessage.decodePassword(body: try f.next()!.body, as: .saslResponse) else { Issue.record("bad response"); return }
        let serverFinal = try server.receiveClientFinal(data: final)
        #expect(h.received(.authentication(.saslFinal(data: serverFinal))) == .wait)
        #expect(h.received(.authentication(.ok)) == .wait)
        #expect(h.received(.parameterStatus(name: "client_encoding", value: "UTF8")) == .wait)
        #expect(h.received(.backendKeyData(CancelRequest(processID: 99, secretKey: 7))) == .wait)
        #expect(h.received(.readyForQuery(.idle)) == .ready(parameters: [("client_encoding", "UTF8")], key: CancelRequest(processID: 99, secretKey: 7), status: .idle))
    }

    @Test func rejectedCredentialsBecome08006NamingTheBackend() {
        var h = BackendHandshake(backend: backend)
        guard case .fail(let e) = h.received(.errorResponse(ErrorFields(severity: "FATAL", code: "28P01", message: "password authentication failed"))) else {
            Issue.record("expected failure"); return
        }
        #expect(e.sqlState == "08006" && e.message!.contains("\"legacy\"") && !e.message!.contains("pw"))
    }

    @Test func readyBeforeAuthIsAViolation() {
        var h = BackendHandshake(backend: backend)
        guard case .fail(let e) = h.received(.readyForQuery(.idle)) else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "08P01")
    }
}

@Suite struct RefusalTests {
    @Test func aFullProxyStillAnswersSSLThenRefusesTheStartup() throws {
        var h = ClientHandshake(config: try ConfigLoader.parse(sampleConfig, environment: ["ONBOARDING_PASSWORD": "a", "LEGACY_DB_PASSWORD": "b"]))
        h.refusal = ProxyError.tooManyClients(5)
        var w = ByteWriter(); StartupPacket.sslRequest.encode(into: &w)
        #expect(h.startupPacketReceived(w.bytes[4...]) == .send([0x4E]))
        guard case .fail(let e) = h.startupPacketReceived(startupBody([("user", "ops")])) else { Issue.record("expected refusal"); return }
        #expect(e.sqlState == "53300")
    }
}

@Suite struct BackendPasswordMethodTests {
    let backend = BackendConfig(name: "legacy", host: "127.0.0.1", port: 5433, database: "db", user: "alice", password: "secret")

    func passwordSent(_ action: BackendHandshake.Action) throws -> String? {
        guard case .send(let bytes) = action else { return nil }
        var f = MessageFramer(); f.append(bytes)
        guard case .password(let p) = try FrontendMessage.decodePassword(body: try f.next()!.body, as: .password) else { return nil }
        return p
    }

    @Test func md5AndCleartextAnswers() throws {
        var h = BackendHandshake(backend: backend)
        let md5 = try passwordSent(h.received(.authentication(.md5Password(salt: [9, 8, 7, 6]))))
        // PostgreSQL's formula, computed independently.
        let inner = Crypto.md5Hex(Array("secretalice".utf8))
        #expect(md5 == "md5" + Crypto.md5Hex(Array(inner.utf8) + [9, 8, 7, 6]))
        var c = BackendHandshake(backend: backend)
        #expect(try passwordSent(c.received(.authentication(.cleartextPassword))) == "secret")
    }

    @Test func missingPasswordIsAClearError() {
        var h = BackendHandshake(backend: BackendConfig(name: "b", host: "h", port: 1, database: "d", user: "u", password: nil))
        guard case .fail(let e) = h.received(.authentication(.sasl(mechanisms: ["SCRAM-SHA-256"]))) else { Issue.record("expected failure"); return }
        #expect(e.sqlState == "08006" && e[0x48]!.contains("[backends.b]"))
    }
}
