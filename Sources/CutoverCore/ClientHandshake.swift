// The client side of a session's start: startup packet, TLS negotiation, route and user lookup, authentication.
import CutoverProtocol

/// Drives one client from its first byte to "authenticated, route known". No I/O: feed it packets, run its actions.
public struct ClientHandshake {
    public enum Action: Equatable {
        /// Send these bytes and keep going.
        case send([UInt8])
        /// Answer the SSLRequest with `S` and switch the connection to TLS: every later byte is encrypted.
        case startTLS
        /// Send this error and close the connection.
        case fail(ErrorFields)
        /// The connection was a CancelRequest: forward it and close.
        case cancel(CancelRequest)
        /// Authenticated: connect to the route's leader with these startup parameters.
        case connect(RouteTarget, StartupMessage, user: String)
        /// Authenticated as an admin user to the admin database.
        case admin(StartupMessage, user: String)
        case wait
    }

    enum State {
        case awaitingStartup
        case awaitingPassword(user: String, salt: [UInt8])
        case awaitingSASLInitial(user: String)
        case awaitingSASLResponse(user: String, SCRAMServer)
        case done
        case failed
    }

    let config: CutoverConfig
    let phaseOf: (String) -> Phase?
    /// Set when the proxy is full or shutting down: SSL is still refused and cancels still pass, but a
    /// StartupMessage gets this error (after, not instead of, the SSL answer, so clients show the message).
    public var refusal: ErrorFields?
    private var state = State.awaitingStartup
    /// The client's StartupMessage once it came (empty before): who a refused login was, for the log.
    public private(set) var startup = StartupMessage(parameters: [])
    private var resolution = RouteResolution.unknownDatabase
    /// The client asked for TLS and was told yes (the connection is encrypted from the next byte on).
    public private(set) var tlsStarted = false
    /// An SSLRequest and a GSSENCRequest have been answered: one of each is all a client needs (libpq may
    /// try GSS encryption, then TLS); more is a client looping on them (100 000 were accepted).
    private var sslRequested = false, gssRequested = false
    /// Set by the session once TLS has started: our certificate's `tls-server-end-point` hash, so
    /// SCRAM-SHA-256-PLUS is offered (channel binding) as well as SCRAM-SHA-256.
    public var channelBinding: [UInt8]?
    /// Set by the session once TLS is established: the client certificate's common name, when the client
    /// sent one that verified against `client_tls_ca_file` (what a `cert` user is authenticated by).
    public var clientCertificateName: String?

    /// `phaseOf` gives a route's current (run-time) phase; the config's phase is only its initial value.
    /// The client came through the Unix-domain socket: as PostgreSQL does, TLS is neither offered nor required.
    public var isLocal = false

    public init(config: CutoverConfig, phaseOf: @escaping (String) -> Phase? = { _ in nil }) {
        self.config = config
        self.phaseOf = phaseOf
    }

    /// The client opened with a TLS handshake instead of an SSLRequest (PostgreSQL 17's direct TLS).
    public mutating func startedTLSDirectly() { tlsStarted = true }

    /// The framer mode the next packet needs: only the first packets are untyped.
    public var expectsUntyped: Bool { if case .awaitingStartup = state { return true } else { return false } }

    /// The kind of 'p' message expected next.
    public var passwordKind: FrontendMessage.PasswordKind? {
        switch state {
        case .awaitingPassword: return .password
        case .awaitingSASLInitial: return .saslInitial
        case .awaitingSASLResponse: return .saslResponse
        default: return nil
        }
    }

    public mutating func startupPacketReceived(_ body: ArraySlice<UInt8>) -> Action {
        let packet: StartupPacket
        do { packet = try StartupPacket.decode(body: body) } catch let e as ProtocolError {
            return fail(ProxyError.describe(e))
        } catch { return fail(ProxyError.protocolViolation("invalid startup packet")) }
        switch packet {
        case .sslRequest where config.server.clientTLS != .disable && !isLocal:
            if tlsStarted { return fail(ProxyError.protocolViolation("SSLRequest received on an encrypted connection")) }
            tlsStarted = true
            return .startTLS
        case .sslRequest where sslRequested, .gssEncRequest where gssRequested:
            return fail(ProxyError.protocolViolation("\(packet.isSSL ? "SSLRequest" : "GSSENCRequest") received twice"))
        case .sslRequest, .gssEncRequest:
            if packet.isSSL { sslRequested = true } else { gssRequested = true }
            return .send([0x4E]) // 'N': not offered; the client continues in clear text (or gives up)
        case .cancel(let key):
            state = .done
            return .cancel(key)
        case .startup(let message):
            return startupReceived(message)
        }
    }

    mutating func startupReceived(_ message: StartupMessage) -> Action {
        startup = message
        if let refusal { return fail(refusal) }
        if config.server.clientTLS == .require && !tlsStarted && !isLocal {
            return fail(ProxyError.fatal("28000", "the proxy accepts only encrypted connections",
                                         hint: "Connect with sslmode=require (or verify-ca / verify-full)."))
        }
        guard let userName = message.user, !userName.isEmpty else {
            return fail(ProxyError.fatal("28000", "no PostgreSQL user name specified in startup packet"))
        }
        if message["replication"].map({ $0 != "false" && $0 != "0" && $0 != "off" }) ?? false {
            return fail(ProxyError.fatal("08P01", "replication connections are not supported by the proxy"))
        }
        let database = message.database ?? userName
        resolution = config.resolve(database: database, phase: config.routes[database] != nil ? phaseOf(database) : nil)
        // An unknown database is refused only after authentication (`authenticated`), as PostgreSQL does, so
        // route names cannot be listed by probing; an unknown user still goes through a password exchange,
        // so probing cannot tell users apart either.
        let user = config.users[userName]
        switch user?.auth ?? .scramSHA256 {
        case .trust:
            return authenticated(userName)
        case .cert:
            // As PostgreSQL's cert method: the certificate is the proof, its CN must be the user name.
            guard tlsStarted, let name = clientCertificateName else {
                return fail(ProxyError.fatal("28000", "connection requires a valid client certificate",
                                             hint: "Connect over TLS with sslcert and sslkey: a certificate issued by a CA in client_tls_ca_file."))
            }
            guard name == userName else {
                return fail(ProxyError.fatal("28000", "certificate authentication failed for user \"\(userName)\"",
                                             detail: "The certificate's common name \"\(name)\" is not the user name."))
            }
            return authenticated(userName)
        case .md5:
            let salt = Crypto.randomBytes(4)
            state = .awaitingPassword(user: userName, salt: salt)
            return send(.authentication(.md5Password(salt: salt)))
        case .scramSHA256:
            state = .awaitingSASLInitial(user: userName)
            return send(.authentication(.sasl(mechanisms: SCRAMServer.mechanisms(channelBinding: channelBinding))))
        }
    }

    /// A 'p' message (its body), interpreted by the current authentication state.
    public mutating func passwordMessageReceived(_ body: ArraySlice<UInt8>) -> Action {
        guard let kind = passwordKind else { return fail(ProxyError.protocolViolation("unexpected password message")) }
        let message: FrontendMessage
        do { message = try FrontendMessage.decodePassword(body: body, as: kind) } catch let e as ProtocolError {
            return fail(ProxyError.describe(e))
        } catch { return fail(ProxyError.protocolViolation("invalid password message")) }
        switch (state, message) {
        case (.awaitingPassword(let user, let salt), .password(let response)):
            guard let stored = config.users[user]?.md5, MD5Password.matches(response, stored: stored, salt: salt) else {
                return fail(ProxyError.passwordFailed(user: user))
            }
            return authenticated(user)
        case (.awaitingSASLInitial(let user), .saslInitialResponse(let mechanism, let data)):
            // Unknown users get a mock verifier: the exchange fails at the proof, like a wrong password, with
            // the same salt every time and no more work than a real user's.
            let verifier = config.users[user]?.scram ?? SCRAMVerifier.mock(user: user)
            var server = SCRAMServer(verifier: verifier, channelBinding: channelBinding)
            do {
                let first = try server.receiveClientFirst(mechanism: mechanism, data: data)
                state = .awaitingSASLResponse(user: user, server)
                return send(.authentication(.saslContinue(data: first)))
            } catch .unsupportedMechanism(let m) {
                return fail(ProxyError.fatal("08P01", "SASL mechanism \(m) is not supported; use SCRAM-SHA-256"))
            } catch .channelBindingUnsupported {
                return fail(ProxyError.fatal("08P01", "channel binding is not supported without TLS"))
            } catch .channelBindingNegotiation {
                return fail(ProxyError.fatal("08P01", "SCRAM channel binding negotiation error",
                                             detail: "The client claims the server does not support channel binding, or asks for it without the PLUS mechanism."))
            } catch {
                return fail(ProxyError.protocolViolation("malformed SCRAM client-first-message"))
            }
        case (.awaitingSASLResponse(let user, let server), .saslResponse(let data)):
            do {
                let final: [UInt8]
                do { final = try server.receiveClientFinal(data: data) } catch .channelBindingMismatch {
                    return fail(ProxyError.fatal("08P01", "SCRAM channel binding check failed"))
                }
                guard config.users[user] != nil else { return fail(ProxyError.passwordFailed(user: user)) }
                var w = ByteWriter()
                BackendMessage.authentication(.saslFinal(data: final)).encode(into: &w)
                let next = authenticated(user)
                if case .fail = next { return next }
                // SASLFinal goes out first; AuthenticationOk follows once the backend is ready.
                pendingPrefix = w.bytes
                return next
            } catch .wrongProof {
                return fail(ProxyError.passwordFailed(user: user))
            } catch {
                return fail(ProxyError.protocolViolation("malformed SCRAM client-final-message"))
            }
        default:
            return fail(ProxyError.protocolViolation("unexpected authentication message"))
        }
    }

    /// Bytes to send before the result of `.connect`/`.admin` (the SASLFinal message), consumed once.
    public private(set) var pendingPrefix: [UInt8] = []
    public mutating func takePendingPrefix() -> [UInt8] { defer { pendingPrefix = [] }; return pendingPrefix }

    mutating func authenticated(_ user: String) -> Action {
        state = .done
        switch resolution {
        case .admin:
            guard config.users[user]?.admin == true else {
                return fail(ProxyError.fatal("42501", "user \"\(user)\" may not use the admin database",
                                             hint: "Mark the user admin = true in [[users]]."))
            }
            return .admin(startup, user: user)
        case .route(let target):
            // PostgreSQL's answer when a role lacks CONNECT on a database.
            if let allowed = config.users[user]?.routes, !allowed.contains(target.route ?? "*") {
                return fail(ProxyError.fatal("42501", "permission denied for database \"\(startup.database ?? "")\"",
                                             detail: "User \"\(user)\" may not use this route (see its routes in [[users]])."))
            }
            return .connect(target, startup, user: user)
        case .unknownDatabase:
            return fail(ProxyError.unknownDatabase(startup.database ?? ""))
        }
    }

    private mutating func fail(_ e: ErrorFields) -> Action {
        state = .failed
        return .fail(e)
    }

    private func send(_ m: BackendMessage) -> Action {
        var w = ByteWriter()
        m.encode(into: &w)
        return .send(w.bytes)
    }
}

extension StartupPacket {
    var isSSL: Bool { if case .sslRequest = self { return true } else { return false } }
}
