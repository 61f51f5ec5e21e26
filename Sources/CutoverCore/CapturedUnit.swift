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
                                             with: value.map(SQLText.quoteEscapedLiteral) ?? "pg_catalog.current_setting('cutover.not_computed_by_the_leader')")
        }
        return text
    }

    /// The follower's copy of a captured unit (`template`: the client's messages, whole), with the leader's
    /// values of each execution (`values[k]` for `executions[k]`, in the order they run): a captured Query
    /// carries them as literals; a Bind of a captured statement (named, or the unnamed one parsed in this
    /// unit) runs from the proxy's own statement parsed just before it with them (the client's statement
    /// keeps the client's text, and its next execution needs other values: a driver's batch binds one
    /// statement many times before one Sync).
    public static func renderForFollower(_ template: [UInt8], executions: [CaptureExecution], values: [[String?]]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(template.count + 256 * executions.count)
        var next = 0 // the next execution
        var unnamedParse: [UInt8]? // the unit's last Parse of the unnamed statement, as the client sent it
        template.withUnsafeBytes { raw in
            let whole = forEachMessage(raw) { id, body, range in
                var replaced: [UInt8]?
                let e = next < executions.count && next < values.count ? executions[next] : nil
                switch id {
                case FrontendMessageID.query.rawValue:
                    if let e, e.statement == nil, text(id: id, body: body) == e.text {
                        replaced = replacingText(id: id, body: body, with: followerText(e.write, values: values[next]))
                        next += 1
                    }
                case FrontendMessageID.parse.rawValue where statementName(id: id, body: body) == "":
                    unnamedParse = Array(raw[range])
                case FrontendMessageID.bind.rawValue:
                    guard let e, let name = statementName(id: id, body: body), name == (e.statement ?? "") else { break }
                    let parse: [UInt8]?
                    if name.isEmpty {
                        parse = unnamedParse.flatMap { p in p.withUnsafeBytes { text(id: p[0], body: UnsafeRawBufferPointer(rebasing: $0[5...])) } == e.text ? p : nil }
                    } else {
                        parse = e.parse
                    }
                    guard let parse else { break }
                    replaced = fromReservedStatement(bind: body, parse: parse, text: followerText(e.write, values: values[next]))
                    next += 1
                default:
                    break
                }
                if let replaced { out += replaced } else { out += raw[range] }
            }
            if whole < raw.count { out += raw[whole...] }
        }
        return out
    }

    /// A Bind (`bind`: its body) run from the proxy's own statement instead: Close, Parse of `text` with the
    /// client's parameter types (from `parse`, a whole Parse message), the Bind of it, Close again.
    static func fromReservedStatement(bind body: UnsafeRawBufferPointer, parse: [UInt8], text: String) -> [UInt8] {
        var parsed: [UInt8] = []
        parse.withUnsafeBytes { p in
            let parseBody = UnsafeRawBufferPointer(rebasing: p[5...])
            var own = Array(reservedStatement.utf8) + [0] + Array(parseBody[(parseBody.firstIndex(of: 0)! + 1)...])
            own.withUnsafeBytes { parsed = replacingText(id: FrontendMessageID.parse.rawValue, body: $0, with: text) ?? [] }
        }
        // The Bind, now of that statement, which is closed right after (a portal outlives it).
        let portalEnd = body.firstIndex(of: 0)!
        let statementEnd = body[(portalEnd + 1)...].firstIndex(of: 0)!
        var w = ByteWriter(capacity: body.count + 40)
        w.beginMessage(FrontendMessageID.bind.rawValue)
        w.writeBytes(UnsafeRawBufferPointer(rebasing: body[...portalEnd]))
        w.writeCString(reservedStatement)
        w.writeBytes(UnsafeRawBufferPointer(rebasing: body[(statementEnd + 1)...]))
        w.endMessage()
        // Closed before it is parsed as well: a Bind that failed last time skipped its Close.
        let close = closeStatement(reservedStatement)
        return close + parsed + w.bytes + close
    }
}

/// One execution of a captured statement in a unit, as it stood when it went to the leader: what the
/// follower's copy is rendered from (later Parses, or a new catalog, must not change it).
public struct CaptureExecution: Sendable {
    public let write: CapturedWrite
    /// The client's text of a captured Query or unnamed statement.
    public let text: String?
    /// A named statement's name and the client's Parse of it (its parameter types).
    public let statement: String?
    public let parse: [UInt8]?

    public init(write: CapturedWrite, text: String?, statement: String?, parse: [UInt8]?) {
        self.write = write; self.text = text; self.statement = statement; self.parse = parse
    }
}
