// The backend side of a session's start: the proxy logs in to a backend with the backend's own credentials.
import CutoverProtocol

/// Drives one backend login: startup packet out, authentication exchange, then ParameterStatus,
/// BackendKeyData and the first ReadyForQuery. No I/O.
public struct BackendHandshake {
    public enum Action: Equatable {
        case send([UInt8])
        /// Logged in: the backend's parameters (in order), its real cancel key, and its transaction status.
        case ready(parameters: [(String, String)], key: CancelRequest?, status: TransactionStatus)
        case fail(ErrorFields)
        case wait

        public static func == (a: Action, b: Action) -> Bool {
            switch (a, b) {
            case (.send(let x), .send(let y)): return x == y
            case (.fail(let x), .fail(let y)): return x == y
            case (.wait, .wait): return true
            case (.ready(let p1, let k1, let s1), .ready(let p2, let k2, let s2)):
                return k1 == k2 && s1 == s2 && p1.elementsEqual(p2) { $0.0 == $1.0 && $0.1 == $1.1 }
            default: return false
            }
        }
    }

    let backend: BackendConfig
    let saltedPassword: (String, [UInt8], Int) -> [UInt8]
    private var scram: SCRAMClient?
    private var parameters: [(String, String)] = []
    private var key: CancelRequest?
    private var authenticated = false
    /// The backend's `tls-server-end-point` data once its TLS handshake is done: SCRAM then binds to the
    /// channel (SCRAM-SHA-256-PLUS) when the backend offers it, so a man in the middle cannot relay the login.
    public var channelBinding: [UInt8]?

    /// Startup parameters the client chose that reach the backend untouched (everything but identity).
    static let withheld: Set<String> = ["user", "database", "replication"]

    public init(backend: BackendConfig,
                saltedPassword: @escaping (String, [UInt8], Int) -> [UInt8] = { SCRAMClient.saltedPassword($0, salt: $1, iterations: $2) }) {
        self.backend = backend
        self.saltedPassword = saltedPassword
    }

    /// The StartupMessage for the backend: its own user and database, the client's other parameters,
    /// and the route's `search_path` on the legacy side.
    public func startupPacket(client: StartupMessage, database: String, searchPath: String?) -> [UInt8] {
        var params: [(String, String)] = [("user", backend.user), ("database", database)]
        for (k, v) in client.parameters where !Self.withheld.contains(k) && !(searchPath != nil && k == "search_path") {
            params.append((k, v))
        }
        if let searchPath { params.append(("search_path", searchPath)) }
        var w = ByteWriter()
        StartupPacket.startup(StartupMessage(parameters: params)).encode(into: &w)
        return w.bytes
    }

    public mutating func received(_ message: BackendMessage) -> Action {
        switch message {
        case .authentication(let auth):
            return authenticationReceived(auth)
        case .parameterStatus(let name, let value):
            parameters.append((name, value)); return .wait
        case .backendKeyData(let k):
            key = k; return .wait
        case .readyForQuery(let status):
            guard authenticated else { return .fail(ProxyError.protocolViolation("backend sent ReadyForQuery before authenticating")) }
            return .ready(parameters: parameters, key: key, status: status)
        case .errorResponse(let fields):
            return .fail(translate(fields))
        case .noticeResponse, .negotiateProtocolVersion:
            return .wait
        default:
            return .fail(ProxyError.fatal("08P01", "backend \"\(backend.name)\" sent an unexpected message during login"))
        }
    }

    mutating func authenticationReceived(_ auth: Authentication) -> Action {
        func reply(_ m: FrontendMessage) -> Action { var w = ByteWriter(); m.encode(into: &w); return .send(w.bytes) }
        func needPassword() -> Action {
            .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" asks for a password but none is configured",
                                   hint: "Set password, password_env or password_file in [backends.\(backend.name)]."))
        }
        switch auth {
        case .ok:
            authenticated = true; return .wait
        case .cleartextPassword:
            guard let pw = backend.password else { return needPassword() }
            return reply(.password(pw))
        case .md5Password(let salt):
            guard let pw = backend.password else { return needPassword() }
            return reply(.password(MD5Password.response(stored: MD5Password.stored(user: backend.user, password: pw), salt: salt)))
        case .sasl(let mechanisms):
            guard let pw = backend.password else { return needPassword() }
            let binding = mechanisms.contains(SCRAMMechanism.plus) ? channelBinding : nil
            guard binding != nil || mechanisms.contains(SCRAMMechanism.plain) else {
                return .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" offers no supported SASL mechanism (\(mechanisms.joined(separator: ", ")))"))
            }
            var client = SCRAMClient(password: pw, channelBinding: binding)
            let first = client.clientFirst()
            scram = client
            return reply(.saslInitialResponse(mechanism: client.mechanism, data: first))
        case .saslContinue(let data):
            guard var client = scram, let pw = backend.password else { return .fail(ProxyError.protocolViolation("unexpected SASLContinue from backend")) }
            do {
                let final = try client.clientFinal(serverFirst: data) { saltedPassword(pw, $0, $1) }
                scram = client
                return reply(.saslResponse(data: final))
            } catch SCRAMClient.Failure.iterationsTooHigh(let n) {
                return .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" asked for \(n) SCRAM iterations; at most \(SCRAMClient.maximumIterations) are accepted"))
            } catch {
                return .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" sent an invalid SCRAM message"))
            }
        case .saslFinal(let data):
            do { try scram?.verifyServerFinal(data) } catch {
                return .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" failed SCRAM server verification"))
            }
            return .wait
        case .unsupported(let code):
            return .fail(ProxyError.fatal("08006", "backend \"\(backend.name)\" asks for an authentication method the proxy does not support (code \(code))"))
        }
    }

    /// A backend's refusal of the proxy's own credentials is a proxy configuration problem, not the client's.
    func translate(_ fields: ErrorFields) -> ErrorFields {
        guard let code = fields.sqlState, code.hasPrefix("28") else { return fields }
        return ProxyError.fatal("08006", "backend \"\(backend.name)\" rejected the proxy's login as \"\(backend.user)\": \(fields.message ?? code)",
                                hint: "Check the credentials in [backends.\(backend.name)].")
    }
}
