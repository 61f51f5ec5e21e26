// The wire side of deterministic mirroring: a unit's Query and Parse messages rewritten for the leader,
// and a captured unit rendered for the follower with the leader's values as literals. Pure bytes in, bytes out.
import CutoverProtocol

public enum CapturedUnit {
    /// Each frontend message in `bytes` (id, body without its header, the bytes it spans): a unit's whole
    /// messages (a last one cut short is reported with the body it has). Returns where the walk stopped: a
    /// tail shorter than a header is not a message.
    @discardableResult
    public static func forEachMessage(_ bytes: UnsafeRawBufferPointer, _ visit: (UInt8, UnsafeRawBufferPointer, Range<Int>) -> Void) -> Int {
        var i = 0
        while i + 5 <= bytes.count {
            let length = Int(Int32(bigEndian: bytes.loadUnaligned(fromByteOffset: i + 1, as: Int32.self)))
            let end = min(bytes.count, i + 1 + max(4, length))
            visit(bytes[i], UnsafeRawBufferPointer(rebasing: bytes[(i + 5)..<end]), i..<end)
            i = end
        }
        return i
    }

    /// A Query or Parse message with `text` in place of its statement text; nil for any other message or a
    /// body that does not read as one. (`body` is the message without its 5-byte header.)
    public static func replacingText(id: UInt8, body: UnsafeRawBufferPointer, with text: String) -> [UInt8]? {
        var w = ByteWriter(capacity: body.count + text.utf8.count + 8)
        switch id {
        case FrontendMessageID.query.rawValue:
            w.beginMessage(id)
            w.writeCString(text)
            w.endMessage()
        case FrontendMessageID.parse.rawValue:
            guard let nameEnd = body.firstIndex(of: 0), let textEnd = body[(nameEnd + 1)...].firstIndex(of: 0) else { return nil }
            w.beginMessage(id)
            w.writeBytes(UnsafeRawBufferPointer(rebasing: body[...nameEnd]))
            w.writeCString(text)
            w.writeBytes(UnsafeRawBufferPointer(rebasing: body[(textEnd + 1)...])) // parameter types, unchanged
            w.endMessage()
        default:
            return nil
        }
        return w.bytes
    }

    /// The statement text's bytes in a Query or Parse body, without copying (nil for other messages). (The
    /// tracker's C-string reader: memchr, this runs for every mirrored Query.)
    public static func textBytes(id: UInt8, body: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        switch id {
        case FrontendMessageID.query.rawValue: return SessionTracker.cString(body).0
        case FrontendMessageID.parse.rawValue: return SessionTracker.cString(body, from: SessionTracker.cString(body).next).0
        default: return nil
        }
    }

    /// The statement text of a Query or Parse body (nil for other messages).
    public static func text(id: UInt8, body: UnsafeRawBufferPointer) -> String? {
        textBytes(id: id, body: body).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The name a Parse gives its statement, or a Bind the statement it binds.
    public static func statementName(id: UInt8, body: UnsafeRawBufferPointer) -> String? {
        let name: UnsafeRawBufferPointer
        switch id {
        case FrontendMessageID.parse.rawValue: name = SessionTracker.cString(body).0
        case FrontendMessageID.bind.rawValue: name = SessionTracker.cString(body, from: SessionTracker.cString(body).next).0
        default: return nil
        }
        return String(decoding: name, as: UTF8.self)
    }

    /// A Sync, and a Close of the named statement `name`: what the proxy's own units end with or repair by.
    public static let sync: [UInt8] = [FrontendMessageID.sync.rawValue, 0, 0, 0, 4]
    public static func closeStatement(_ name: String) -> [UInt8] {
        var w = ByteWriter(capacity: name.utf8.count + 7)
        w.beginMessage(FrontendMessageID.close.rawValue)
        w.writeBytes([UInt8(ascii: "S")])
        w.writeCString(name)
        w.endMessage()
        return w.bytes
    }

    /// The follower's own prepared statement for a captured execution of a named one.
    static let reservedStatement = "cutover_capture"

    /// The follower's text of `write` with the leader's `values` in place of the settings it would read.
    public static func followerText(_ write: CapturedWrite, values: [String?]) -> String {
        var text = write.followerText
        for (k, name) in write.settings.enumerated() {
            let value = k < values.count ? values[k] : nil
            // A value the leader never computed: an expression that fails if the follower evaluates it
            // (the leader's statement failed first, or never reached it: an UPDATE that matched no row).
            text = text.replacingOccurrences(of: "pg_catalog.current_setting(\(SQLText.quoteLiteral(name)))",
                                             with: value.map(SQLText.quoteLiteral) ?? "pg_catalog.current_setting('cutover.not_computed_by_the_leader')")
        }
        return text
    }

    /// The follower's copy of a captured unit (`template`: the client's messages, whole): each captured Query
    /// or unnamed Parse carries the leader's values as literals; a Bind of a named captured statement is run
    /// from the proxy's own statement parsed just before it with those literals (the named one keeps the client's text,
    /// and another execution of it would need other values). `writes` resolves a statement text or name to
    /// its capture, `parseOf` a statement name to the client's Parse message (for its parameter types).
    public static func renderForFollower(_ template: [UInt8], values: [[String?]], capturedText: (String) -> CapturedWrite?,
                                         capturedName: (String) -> CapturedWrite?, parseOf: (String) -> [UInt8]?) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(template.count + 256)
        var next = 0 // index of the next execution's values
        template.withUnsafeBytes { raw in
            let whole = forEachMessage(raw) { id, body, range in
                var replaced: [UInt8]?
                if id == FrontendMessageID.query.rawValue || (id == FrontendMessageID.parse.rawValue && statementName(id: id, body: body) == ""),
                   let text = text(id: id, body: body), let write = capturedText(text), next < values.count {
                    replaced = replacingText(id: id, body: body, with: followerText(write, values: values[next]))
                    next += 1
                } else if id == FrontendMessageID.bind.rawValue, let name = statementName(id: id, body: body), !name.isEmpty,
                          let write = capturedName(name), let parse = parseOf(name), next < values.count {
                    let literal = followerText(write, values: values[next])
                    next += 1
                    var bytes: [UInt8] = []
                    parse.withUnsafeBytes { p in
                        let parseBody = UnsafeRawBufferPointer(rebasing: p[5...])
                        // The same Parse under the proxy's own name (the client's unnamed statement stays as it
                        // was): its parameter types are the client's.
                        var own = Array(reservedStatement.utf8) + [0] + Array(parseBody[(parseBody.firstIndex(of: 0)! + 1)...])
                        own.withUnsafeBytes { bytes = replacingText(id: FrontendMessageID.parse.rawValue, body: $0, with: literal) ?? [] }
                    }
                    // The Bind, now of that statement, which is closed right after (a portal outlives it).
                    let portalEnd = body.firstIndex(of: 0)!
                    let statementEnd = body[(portalEnd + 1)...].firstIndex(of: 0)!
                    var w = ByteWriter(capacity: body.count + 40)
                    w.beginMessage(id)
                    w.writeBytes(UnsafeRawBufferPointer(rebasing: body[...portalEnd]))
                    w.writeCString(reservedStatement)
                    w.writeBytes(UnsafeRawBufferPointer(rebasing: body[(statementEnd + 1)...]))
                    w.endMessage()
                    // Closed before it is parsed as well: a Bind that failed last time skipped its Close.
                    let close = closeStatement(reservedStatement)
                    replaced = close + bytes + w.bytes + close
                }
                if let replaced { out += replaced } else { out += raw[range] }
            }
            if whole < raw.count { out += raw[whole...] }
        }
        return out
    }
}
