// ErrorResponse and NoticeResponse payloads: typed fields (severity, SQLSTATE, message, ...).

/// The fields of an ErrorResponse/NoticeResponse, keyed by their one-byte field type.
public struct ErrorFields: Equatable, Sendable {
    public var fields: [(UInt8, String)]

    public init(fields: [(UInt8, String)]) { self.fields = fields }

    /// An error the proxy raises itself. `severity` is ERROR or FATAL; `code` a SQLSTATE.
    public init(severity: String, code: String, message: String, detail: String? = nil, hint: String? = nil) {
        fields = [(0x53, severity), (0x56, severity), (0x43, code), (0x4D, message)] // S V C M
        if let detail { fields.append((0x44, detail)) } // D
        if let hint { fields.append((0x48, hint)) }     // H
    }

    public subscript(field: UInt8) -> String? { fields.first { $0.0 == field }?.1 }
    public var severity: String? { self[0x56] ?? self[0x53] }
    public var sqlState: String? { self[0x43] }
    public var message: String? { self[0x4D] }

    public static func decode(body: ArraySlice<UInt8>) throws -> ErrorFields {
        var r = ByteReader(body, context: "ErrorResponse")
        var fields: [(UInt8, String)] = []
        while true {
            let t = try r.readUInt8()
            if t == 0 { break }
            fields.append((t, try r.readCString()))
        }
        try r.finish()
        return ErrorFields(fields: fields)
    }

    /// Encodes as ErrorResponse (`E`) or NoticeResponse (`N`).
    public func encode(into w: inout ByteWriter, notice: Bool = false) {
        w.beginMessage(notice ? BackendMessageID.noticeResponse.rawValue : BackendMessageID.errorResponse.rawValue)
        for (t, v) in fields { w.writeUInt8(t); w.writeCString(v) }
        w.writeUInt8(0)
        w.endMessage()
    }

    public static func == (a: ErrorFields, b: ErrorFields) -> Bool {
        a.fields.elementsEqual(b.fields) { $0.0 == $1.0 && $0.1 == $1.1 }
    }
}
