// Frontend messages the proxy decodes or originates: authentication responses, Query, Terminate.

/// The frontend messages the proxy needs as values. Everything else a client sends is forwarded as bytes.
public enum FrontendMessage: Equatable, Sendable {
    /// A 'p' message during cleartext or md5 authentication.
    case password(String)
    /// The first 'p' message of a SASL exchange.
    case saslInitialResponse(mechanism: String, data: [UInt8])
    /// Later 'p' messages of a SASL exchange.
    case saslResponse(data: [UInt8])
    case query(String)
    case terminate

    /// 'p' bodies are ambiguous on the wire; the authentication state says which one is expected.
    public enum PasswordKind: Sendable { case password, saslInitial, saslResponse }

    public static func decodePassword(body: ArraySlice<UInt8>, as kind: PasswordKind) throws -> FrontendMessage {
        var r = ByteReader(body, context: "PasswordMessage")
        let result: FrontendMessage
        switch kind {
        case .password:
            result = .password(try r.readCString())
        case .saslInitial:
            let mech = try r.readCString()
            let n = try r.readInt32()
            result = .saslInitialResponse(mechanism: mech, data: n < 0 ? [] : Array(try r.readBytes(Int(n))))
        case .saslResponse:
            result = .saslResponse(data: Array(r.readRest()))
        }
        try r.finish()
        return result
    }

    public func encode(into w: inout ByteWriter) {
        switch self {
        case .password(let p):
            w.beginMessage(FrontendMessageID.password.rawValue); w.writeCString(p)
        case .saslInitialResponse(let mech, let data):
            w.beginMessage(FrontendMessageID.password.rawValue)
            w.writeCString(mech); w.writeInt32(Int32(data.count)); w.writeBytes(data)
        case .saslResponse(let data):
            w.beginMessage(FrontendMessageID.password.rawValue); w.writeBytes(data)
        case .query(let q):
            w.beginMessage(FrontendMessageID.query.rawValue); w.writeCString(q)
        case .terminate:
            w.beginMessage(FrontendMessageID.terminate.rawValue)
        }
        w.endMessage()
    }
}
