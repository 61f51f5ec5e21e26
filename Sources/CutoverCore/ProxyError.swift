// The errors the proxy itself sends to clients, each with its SQLSTATE and a message a person can act on.
import CutoverProtocol

public enum ProxyError {
    public static func fatal(_ code: String, _ message: String, detail: String? = nil, hint: String? = nil) -> ErrorFields {
        ErrorFields(severity: "FATAL", code: code, message: message, detail: detail, hint: hint)
    }

    public static func protocolViolation(_ message: String) -> ErrorFields { fatal("08P01", message) }

    public static func describe(_ e: ProtocolError) -> ErrorFields {
        switch e {
        case .messageTooLarge(let length, let limit):
            return fatal("08P01", "message length \(length) exceeds the proxy's limit of \(limit) bytes",
                         hint: "Raise [server] max_message_size if such messages are legitimate.")
        case .invalidLength(let length): return protocolViolation("invalid message length \(length)")
        case .unsupportedProtocolVersion(let major, let minor):
            return protocolViolation("unsupported frontend protocol \(major).\(minor): the proxy supports 3.0")
        case .truncated(let what): return protocolViolation("invalid \(what): truncated")
        case .trailingBytes(let what): return protocolViolation("invalid \(what): trailing bytes")
        case .malformed(let what): return protocolViolation("malformed \(what)")
        }
    }

    public static func passwordFailed(user: String) -> ErrorFields {
        fatal("28P01", "password authentication failed for user \"\(user)\"")
    }

    public static func unknownDatabase(_ name: String) -> ErrorFields {
        fatal("3D000", "database \"\(name)\" does not exist", hint: "The proxy has no route for this name; see the [routes] of its config.")
    }

    public static func tooManyClients(_ limit: Int) -> ErrorFields {
        fatal("53300", "sorry, too many clients already (the proxy's max_clients is \(limit))")
    }

    /// Logins not finished yet have a bound of their own (and one per client address), so connections that
    /// never log in cannot take the places of clients that do.
    public static func tooManyLogins(_ limit: Int, from address: String?) -> ErrorFields {
        fatal("53300", "sorry, too many logins in progress\(address.map { " from \($0)" } ?? "") (at most \(limit))")
    }

    /// `address`: what a host name resolved to, named when it differs from the host.
    public static func backendUnavailable(_ backend: BackendConfig, _ reason: String, address: String? = nil) -> ErrorFields {
        let resolved = address.map { $0 == backend.host ? "" : " (\($0))" } ?? ""
        return fatal("08006", "cannot connect to backend \"\(backend.name)\" at \(backend.host):\(backend.port)\(resolved): \(reason)")
    }

    public static func shuttingDown() -> ErrorFields {
        fatal("57P01", "terminating connection because the proxy is shutting down")
    }
}
