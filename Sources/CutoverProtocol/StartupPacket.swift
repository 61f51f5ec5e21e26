// The untyped first packet of a connection: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.

/// What a client sends before any typed message. Identified by the 32-bit code after the length.
public enum StartupPacket: Equatable, Sendable {
    case startup(StartupMessage)
    case sslRequest
    case gssEncRequest
    case cancel(CancelRequest)

    static let sslRequestCode: Int32 = 80877103
    static let gssEncRequestCode: Int32 = 80877104
    static let cancelRequestCode: Int32 = 80877102
    public static let protocol3: Int32 = 196608 // 3.0

    /// Decodes a complete packet body (everything after the 4-byte length).
    public static func decode(body: ArraySlice<UInt8>) throws -> StartupPacket {
        var r = ByteReader(body, context: "startup packet")
        let code = try r.readInt32()
        switch code {
        case sslRequestCode:
            try r.finish(); return .sslRequest
        case gssEncRequestCode:
            try r.finish(); return .gssEncRequest
        case cancelRequestCode:
            let pid = try r.readInt32(), secret = try r.readInt32()
            try r.finish()
            return .cancel(CancelRequest(processID: pid, secretKey: secret))
        case protocol3:
            var params: [(String, String)] = []
            while true {
                let key = try r.readCString()
                if key.isEmpty { break }
                params.append((key, try r.readCString()))
            }
            try r.finish()
            return .startup(StartupMessage(parameters: params))
        default:
            throw ProtocolError.unsupportedProtocolVersion(major: Int(code >> 16), minor: Int(code & 0xFFFF))
        }
    }

    public func encode(into w: inout ByteWriter) {
        w.beginMessage(nil)
        switch self {
        case .sslRequest: w.writeInt32(Self.sslRequestCode)
        case .gssEncRequest: w.writeInt32(Self.gssEncRequestCode)
        case .cancel(let c):
            w.writeInt32(Self.cancelRequestCode); w.writeInt32(c.processID); w.writeInt32(c.secretKey)
        case .startup(let s):
            w.writeInt32(Self.protocol3)
            for (k, v) in s.parameters { w.writeCString(k); w.writeCString(v) }
            w.writeUInt8(0)
        }
        w.endMessage()
    }
}

/// Protocol 3.0 StartupMessage: ordered key/value parameters (`user`, `database`, GUCs such as `DateStyle`).
public struct StartupMessage: Equatable, Sendable {
    /// The pairs as they came on the wire (`key NUL value NUL`...): one allocation, where an array of String
    /// pairs cost several per session, and a session keeps its startup message for follower logins.
    private var raw: [UInt8]

    public init(parameters: [(String, String)]) {
        raw = []
        raw.reserveCapacity(parameters.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 2 })
        for (k, v) in parameters {
            raw.append(contentsOf: k.utf8); raw.append(0)
            raw.append(contentsOf: v.utf8); raw.append(0)
        }
    }

    /// Ordered pairs: the backend sees them in the order the client sent them.
    public var parameters: [(String, String)] {
        var pairs: [(String, String)] = []
        var fields = raw.split(separator: 0, omittingEmptySubsequences: false).makeIterator()
        // A value may be empty, so fields are taken two at a time (the last split piece is the final NUL's).
        while let k = fields.next(), let v = fields.next(), !k.isEmpty {
            pairs.append((String(decoding: k, as: UTF8.self), String(decoding: v, as: UTF8.self)))
        }
        return pairs
    }

    /// One parameter, found in the raw pairs without decoding the others (`user`, `database` and
    /// `application_name` are read several times per session).
    public subscript(key: String) -> String? {
        let wanted = Array(key.utf8)
        return raw.withUnsafeBufferPointer { r -> String? in
            var i = 0
            while i < r.count {
                let keyStart = i
                while i < r.count && r[i] != 0 { i += 1 }
                let keyEnd = i
                guard keyEnd > keyStart, keyEnd < r.count else { return nil } // the terminating empty key, or a cut pair
                i += 1
                let valueStart = i
                while i < r.count && r[i] != 0 { i += 1 }
                let valueEnd = min(i, r.count)
                i += 1
                if keyEnd - keyStart == wanted.count && wanted.withUnsafeBufferPointer({ w in
                    (0..<w.count).allSatisfy { r[keyStart + $0] == w[$0] }
                }) {
                    return String(decoding: UnsafeBufferPointer(rebasing: r[valueStart..<valueEnd]), as: UTF8.self)
                }
            }
            return nil
        }
    }

    public var user: String? { self["user"] }
    /// The database defaults to the user name, as in PostgreSQL.
    public var database: String? { self["database"].flatMap { $0.isEmpty ? nil : $0 } ?? user }

}

/// A CancelRequest: the key a client got in BackendKeyData.
public struct CancelRequest: Equatable, Hashable, Sendable {
    public var processID: Int32
    public var secretKey: Int32
    public init(processID: Int32, secretKey: Int32) { self.processID = processID; self.secretKey = secretKey }
}
