// Backend messages that drive the proxy's decisions, decoded; every other message stays opaque bytes.

/// The backend messages the proxy decodes. Row data, COPY data and the rest are forwarded undecoded.
public enum BackendMessage: Equatable, Sendable {
    case authentication(Authentication)
    case backendKeyData(CancelRequest)
    case parameterStatus(name: String, value: String)
    case readyForQuery(TransactionStatus)
    case errorResponse(ErrorFields)
    case noticeResponse(ErrorFields)
    case commandComplete(tag: String)
    case negotiateProtocolVersion(minor: Int32, unsupported: [String])
    case other(id: UInt8)

    public static func decode(id: UInt8, body: ArraySlice<UInt8>) throws -> BackendMessage {
        guard let known = BackendMessageID(rawValue: id) else { return .other(id: id) }
        switch known {
        case .authentication:
            return .authentication(try Authentication.decode(body: body))
        case .backendKeyData:
            var r = ByteReader(body, context: "BackendKeyData")
            let key = CancelRequest(processID: try r.readInt32(), secretKey: try r.readInt32())
            try r.finish()
            return .backendKeyData(key)
        case .parameterStatus:
            var r = ByteReader(body, context: "ParameterStatus")
            let name = try r.readCString(), value = try r.readCString()
            try r.finish()
            return .parameterStatus(name: name, value: value)
        case .readyForQuery:
            var r = ByteReader(body, context: "ReadyForQuery")
            let raw = try r.readUInt8()
            try r.finish()
            guard let status = TransactionStatus(rawValue: raw) else {
                throw ProtocolError.malformed("ReadyForQuery status \(raw)")
            }
            return .readyForQuery(status)
        case .errorResponse:
            return .errorResponse(try ErrorFields.decode(body: body))
        case .noticeResponse:
            return .noticeResponse(try ErrorFields.decode(body: body))
        case .commandComplete:
            var r = ByteReader(body, context: "CommandComplete")
            let tag = try r.readCString()
            try r.finish()
            return .commandComplete(tag: tag)
        case .negotiateProtocolVersion:
            var r = ByteReader(body, context: "NegotiateProtocolVersion")
            let minor = try r.readInt32()
            let n = try r.readInt32()
            var names: [String] = []
            for _ in 0..<max(0, Int(n)) { names.append(try r.readCString()) }
            try r.finish()
            return .negotiateProtocolVersion(minor: minor, unsupported: names)
        default:
            return .other(id: id)
        }
    }

    /// Encodes the messages the proxy itself originates toward a client.
    public func encode(into w: inout ByteWriter) {
        switch self {
        case .authentication(let a): a.encode(into: &w)
        case .backendKeyData(let k):
            w.beginMessage(BackendMessageID.backendKeyData.rawValue)
            w.writeInt32(k.processID); w.writeInt32(k.secretKey)
            w.endMessage()
        case .parameterStatus(let name, let value):
            w.beginMessage(BackendMessageID.parameterStatus.rawValue)
            w.writeCString(name); w.writeCString(value)
            w.endMessage()
        case .readyForQuery(let s):
            w.beginMessage(BackendMessageID.readyForQuery.rawValue)
            w.writeUInt8(s.rawValue)
            w.endMessage()
        case .errorResponse(let f): f.encode(into: &w)
        case .noticeResponse(let f): f.encode(into: &w, notice: true)
        case .commandComplete(let tag):
            w.beginMessage(BackendMessageID.commandComplete.rawValue)
            w.writeCString(tag)
            w.endMessage()
        case .negotiateProtocolVersion(let minor, let names):
            w.beginMessage(BackendMessageID.negotiateProtocolVersion.rawValue)
            w.writeInt32(minor); w.writeInt32(Int32(names.count))
            for n in names { w.writeCString(n) }
            w.endMessage()
        case .other(let id):
            w.beginMessage(id); w.endMessage()
        }
    }
}

/// ReadyForQuery's transaction status: the session's statement and transaction boundary.
public enum TransactionStatus: UInt8, Sendable {
    case idle = 0x49              // ascii: I
    case inTransaction = 0x54     // ascii: T
    case failedTransaction = 0x45 // ascii: E
}

/// The Authentication ('R') message family.
public enum Authentication: Equatable, Sendable {
    case ok
    case cleartextPassword
    case md5Password(salt: [UInt8])
    case sasl(mechanisms: [String])
    case saslContinue(data: [UInt8])
    case saslFinal(data: [UInt8])
    case unsupported(code: Int32)

    static func decode(body: ArraySlice<UInt8>) throws -> Authentication {
        var r = ByteReader(body, context: "Authentication")
        let code = try r.readInt32()
        let result: Authentication
        switch code {
        case 0: result = .ok
        case 3: result = .cleartextPassword
        case 5: result = .md5Password(salt: Array(try r.readBytes(4)))
        case 10:
            var mechs: [String] = []
            while true {
                let m = try r.readCString()
                if m.isEmpty { break }
                mechs.append(m)
            }
            result = .sasl(mechanisms: mechs)
        case 11: result = .saslContinue(data: Array(r.readRest()))
        case 12: result = .saslFinal(data: Array(r.readRest()))
        default:
            _ = r.readRest()
            result = .unsupported(code: code)
        }
        try r.finish()
        return result
    }

    func encode(into w: inout ByteWriter) {
        w.beginMessage(BackendMessageID.authentication.rawValue)
        switch self {
        case .ok: w.writeInt32(0)
        case .cleartextPassword: w.writeInt32(3)
        case .md5Password(let salt): w.writeInt32(5); w.writeBytes(salt)
        case .sasl(let mechs):
            w.writeInt32(10)
            for m in mechs { w.writeCString(m) }
            w.writeUInt8(0)
        case .saslContinue(let d): w.writeInt32(11); w.writeBytes(d)
        case .saslFinal(let d): w.writeInt32(12); w.writeBytes(d)
        case .unsupported(let code): w.writeInt32(code)
        }
        w.endMessage()
    }
}
