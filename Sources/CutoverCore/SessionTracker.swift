// Follows what a client sends: units of work (up to each Query/Sync/FunctionCall) with their statement
// texts, and the session state a follower joining later must be given (SETs, prepared statements).
import CutoverProtocol


/// One unit of work: the client messages answered by exactly one ReadyForQuery.
public struct WorkUnit: Sendable, Equatable {
    /// Statement texts in execution order (a Query's text; each Execute's prepared text).
    public var statements = StatementTexts()
    /// True if the unit ends a transaction with COMMIT (sync mirroring commits on the follower first).
    public var commits = false
    /// A statement of the unit may change data, or is a COPY (`SQLBytes.isWrite`; set while recording units).
    public var writes = false
    /// `writes`, or a statement of the unit is DDL, a CALL or anything else the first keyword does not show
    /// to be a read or transaction control (`LeadingKeyword.mayBeDDLOrCall`): for `KeptWriteCheck`.
    public var mayChangeData = false
    /// Texts of the statements prepared (Parse) in this unit: checked for cross-schema references.
    public var parsed: [String] = []
    /// A statement of this unit may name another route's schema (a qualified name with a known schema):
    /// only such units go through the parser-based cross-schema check.
    public var crossSchemaCandidate = false
    /// Sync mode ran this autocommit write inside a transaction of the proxy's own (`LockStep`): its answers
    /// end with the transaction open, and the proxy's COMMIT or ROLLBACK ends it.
    public var wrappedInTransaction = false
    public init() {}
}

/// A unit's statement texts, in order. The first is kept inline: most units have one, and an array's
/// buffer was an allocation (and a free) per mirrored query.
public struct StatementTexts: RandomAccessCollection, Sendable, Equatable, ExpressibleByArrayLiteral {
    private var head: String?
    private var tail: [String] = []

    public init() {}
    public init(_ texts: [String]) {
        head = texts.first
        tail = Array(texts.dropFirst())
    }
    public init(arrayLiteral texts: String...) { self.init(texts) }

    public var startIndex: Int { 0 }
    public var endIndex: Int { head == nil ? 0 : 1 + tail.count }
    public subscript(i: Int) -> String { i == 0 ? head! : tail[i - 1] }

    public mutating func append(_ text: String) {
        if head == nil { head = text } else { tail.append(text) }
    }
}

/// The cross-schema pre-check of one route: the detector and the route's own schema (lower-cased).
public final class CrossSchemaScope: Sendable {
    public let detector: CrossSchemaDetector
    public let ownSchema: String?
    public init(detector: CrossSchemaDetector, ownSchema: String?) {
        self.detector = detector
        self.ownSchema = ownSchema
    }
}

/// Pure bookkeeping over the client's message stream. Feed it captured frontend messages in order.
public struct SessionTracker: Sendable {
    /// Frontend ids whose bodies the tracker reads.
    public static let capturedIDs: [UInt8] = [
        FrontendMessageID.query.rawValue, FrontendMessageID.parse.rawValue, FrontendMessageID.bind.rawValue,
        FrontendMessageID.execute.rawValue, FrontendMessageID.close.rawValue,
    ]

    /// What the tracker keeps for replay, out of line: most sessions never SET or PREPARE anything, and
    /// eight empty collections inline cost every session 64 bytes (shared copy-on-write between copies).
    /// @unchecked Sendable: it is mutated only through `keptForWrite`, which copies it unless this tracker
    /// holds the only reference, so an instance two trackers share is never written.
    private final class Kept: @unchecked Sendable {
        var settings: [(name: String, text: String)] = []
        var uncommitted: [(unit: Int, name: String, text: String?)] = []
        var rollbackUnits: [Int] = []
        var preparedMessages: [String: [UInt8]] = [:]
        var sqlPrepared: [String: String] = [:]
        var unreplayable: UnreplayableState = []
        var statementText: [String: String] = [:]
        var portalStatement: [String: String] = [:]

        func copy() -> Kept {
            let k = Kept()
            k.settings = settings; k.uncommitted = uncommitted; k.rollbackUnits = rollbackUnits
            k.preparedMessages = preparedMessages; k.sqlPrepared = sqlPrepared; k.unreplayable = unreplayable
            k.statementText = statementText; k.portalStatement = portalStatement
            return k
        }
    }
    private var kept: Kept?

    /// The kept state for writing: allocated on first use, copied if another tracker shares it.
    private mutating func keptForWrite() -> Kept {
        if let k = kept, isKnownUniquelyReferenced(&kept!) { return k }
        let k = kept?.copy() ?? Kept()
        kept = k
        return k
    }

    /// SET/RESET texts to replay, keyed by parameter name (last one wins). Only settings whose transaction
    /// committed get here: a SET is transactional, and one rolled back must not reach a late follower.
    public private(set) var settings: [(name: String, text: String)] {
        get { kept?.settings ?? [] }
        _modify { let k = keptForWrite(); yield &k.settings }
    }
    /// SET/RESET (text nil) and RESET ALL (name "*") seen in units not yet known to have committed, with the
    /// number of the unit they were sent in.
    private var uncommitted: [(unit: Int, name: String, text: String?)] {
        get { kept?.uncommitted ?? [] }
        _modify { let k = keptForWrite(); yield &k.uncommitted }
    }
    /// Units whose statement was ROLLBACK/ABORT (their answer ends a transaction without committing it).
    private var rollbackUnits: [Int] {
        get { kept?.rollbackUnits ?? [] }
        _modify { let k = keptForWrite(); yield &k.rollbackUnits }
    }
    /// Units the session has sent that will be answered (it counts them as it sends them).
    public private(set) var unitsSent = 0
    /// Named protocol-level prepared statements: the whole Parse message, to be re-sent verbatim.
    public private(set) var preparedMessages: [String: [UInt8]] {
        get { kept?.preparedMessages ?? [:] }
        _modify { let k = keptForWrite(); yield &k.preparedMessages }
    }
    /// SQL-level PREPARE texts by name.
    public private(set) var sqlPrepared: [String: String] {
        get { kept?.sqlPrepared ?? [:] }
        _modify { let k = keptForWrite(); yield &k.sqlPrepared }
    }
    public private(set) var unreplayable: UnreplayableState {
        get { kept?.unreplayable ?? [] }
        _modify { let k = keptForWrite(); yield &k.unreplayable }
    }
    /// Statement text by prepared statement name ("" is the unnamed one).
    private var statementText: [String: String] {
        get { kept?.statementText ?? [:] }
        _modify { let k = keptForWrite(); yield &k.statementText }
    }
    /// Prepared statement name by portal name.
    private var portalStatement: [String: String] {
        get { kept?.portalStatement ?? [:] }
        _modify { let k = keptForWrite(); yield &k.portalStatement }
    }
    /// The unit being assembled.
    public private(set) var current = WorkUnit()
    /// When false (outside dual phases) units carry no texts and Bind/Execute are not followed, except
    /// for statements that touch session state or might name another route's schema: the common
    /// statement then costs a keyword check and a byte scan, and no String.
    public var recordUnits = false
    /// Flags statements that may name another route's schema, so their text is kept for the check.
    /// A reference shared by the route's sessions (inline it cost every session 32 bytes).
    public var crossSchema: CrossSchemaScope?

    public init() {}

    /// Whether a statement may name another route's schema. A schema-qualified name needs a dot: most
    /// statements are dismissed by one memchr.
    private func mayNameOtherSchema(_ raw: UnsafeRawBufferPointer) -> Bool {
        guard let scope = crossSchema, SQLBytes.containsByte(raw, 0x2E) else { return false }
        return !scope.detector.candidates(in: raw, own: scope.ownSchema).isEmpty
    }

    /// The bytes up to the first NUL (memchr: message bodies can be long).
    static func cString(_ body: UnsafeRawBufferPointer, from start: Int = 0) -> (UnsafeRawBufferPointer, next: Int) {
        guard start < body.count else { return (UnsafeRawBufferPointer(start: nil, count: 0), body.count) }
        let end = RawBytes.index(of: 0, in: body, from: start) ?? body.count
        return (UnsafeRawBufferPointer(rebasing: body[start..<end]), end + 1)
    }

    /// Handles one message; returns the completed unit when `id` ends one.
    public mutating func received(id: UInt8, body: UnsafeRawBufferPointer?) -> WorkUnit? {
        messageEndsUnit(id: id, body: body) ? takeUnit() : nil
    }

    /// Whether the unit being assembled carries statement texts (it does only when recording, or for the
    /// rare statement that touches session state or may name another schema).
    public var currentHasTexts: Bool { !current.statements.isEmpty || !current.parsed.isEmpty }

    /// The completed unit; the next one starts empty.
    public mutating func takeUnit() -> WorkUnit {
        defer { current = WorkUnit() }
        return current
    }

    /// Starts the next unit without handing this one over (a single-side phase needs only the count).
    public mutating func skipUnit() {
        if currentHasTexts { current = WorkUnit() } else { current.commits = false; current.writes = false; current.mayChangeData = false }
    }

    /// The session sent a unit that earns a ReadyForQuery (it skips Syncs the backend ignores during COPY IN).
    public mutating func unitSent() { unitsSent += 1 }

    /// The leader answered a unit with ReadyForQuery `status`; `previous` is the status before it and
    /// `stillInFlight` the units sent after it not yet answered. When a transaction ends here, the settings
    /// made in it are kept if it committed and dropped if it rolled back (a failed transaction, or
    /// ROLLBACK/ABORT). An autocommit SET commits at its own answer.
    public mutating func unitAnswered(status: TransactionStatus, previous: TransactionStatus, stillInFlight: Int) {
        guard status == .idle, !uncommitted.isEmpty || !rollbackUnits.isEmpty else { return }
        let answered = unitsSent - 1 - stillInFlight
        let rolledBack = previous == .failedTransaction || rollbackUnits.contains(answered)
        var later: [(unit: Int, name: String, text: String?)] = []
        for change in uncommitted {
            guard change.unit <= answered else { later.append(change); continue }
            guard !rolledBack else { continue }
            if change.name == "*" { settings = []; continue }
            settings.removeAll { $0.name == change.name }
            if let text = change.text { settings.append((change.name, text)) }
        }
        uncommitted = later
        rollbackUnits.removeAll { $0 <= answered }
    }

    /// Handles one message; true when `id` ends a unit, which the caller then takes or skips.
    public mutating func messageEndsUnit(id: UInt8, body: UnsafeRawBufferPointer?) -> Bool {
        switch id {
        case FrontendMessageID.query.rawValue:
            guard let body else { break }
            // A Query is one string and its NUL (PostgreSQL rejects anything after it): no search needed.
            // (Pointer arithmetic: `last` and `dropLast()` on the buffer cost ~70 instructions per query.)
            let n = body.count
            let raw = n > 0 && body.load(fromByteOffset: n - 1, as: UInt8.self) == 0
                ? UnsafeRawBufferPointer(start: body.baseAddress, count: n - 1) : Self.cString(body).0
            let keyword = SQLBytes.leadingKeyword(raw)
            if keyword.endsTransaction { current.commits = true }
            if keyword == .rollback || keyword == .abort { rollbackUnits.append(unitsSent) }
            // Only statements that may change tracked state are classified (the rest cost a keyword check).
            // A String is made always when recording units, else only for statements that may change
            // tracked state, take an advisory lock, or name another schema.
            let tracked = keyword.affectsSessionState || SQLBytes.mayTakeAdvisoryLock(raw)
            let foreign = mayNameOtherSchema(raw)
            if recordUnits {
                if SQLBytes.isWrite(raw, keyword: keyword) { current.writes = true; current.mayChangeData = true }
                else if keyword.mayBeDDLOrCall { current.mayChangeData = true }
            }
            if recordUnits || tracked || foreign {
                let text = String(decoding: raw, as: UTF8.self)
                if tracked { track(sql: text) }
                if foreign { current.crossSchemaCandidate = true }
                current.statements.append(text)
            }
            return true
        case FrontendMessageID.parse.rawValue:
            guard let body else { break }
            let (rawName, next) = Self.cString(body)
            let (raw, _) = Self.cString(body, from: next)
            let keyword = SQLBytes.leadingKeyword(raw)
            if !rawName.isEmpty {
                var w = ByteWriter(capacity: body.count + 5)
                w.beginMessage(FrontendMessageID.parse.rawValue); w.writeBytes(body); w.endMessage()
                preparedMessages[String(decoding: rawName, as: UTF8.self)] = w.bytes
            }
            let tracked = keyword.affectsSessionState || SQLBytes.mayTakeAdvisoryLock(raw)
            let foreign = mayNameOtherSchema(raw)
            if foreign { current.crossSchemaCandidate = true }
            if !rawName.isEmpty || recordUnits || tracked || foreign {
                let name = String(decoding: rawName, as: UTF8.self)
                let text = String(decoding: raw, as: UTF8.self)
                statementText[name] = text
                current.parsed.append(text)
                if tracked { track(sql: text) }
            }
        case FrontendMessageID.bind.rawValue:
            guard recordUnits, let body else { break }
            var r = ByteReader(Array(body.prefix(4096))[...], context: "Bind")
            if let portal = try? r.readCString(), let statement = try? r.readCString() { portalStatement[portal] = statement }
        case FrontendMessageID.execute.rawValue:
            guard recordUnits, let body else { break }
            let portal = String(decoding: body.prefix { $0 != 0 }, as: UTF8.self)
            if let text = portalStatement[portal].flatMap({ statementText[$0] }) {
                current.statements.append(text)
                var t = text
                t.withUTF8 {
                    let raw = UnsafeRawBufferPointer($0), keyword = SQLBytes.leadingKeyword(raw)
                    if keyword.endsTransaction { current.commits = true }
                    if SQLBytes.isWrite(raw, keyword: keyword) { current.writes = true; current.mayChangeData = true }
                    else if keyword.mayBeDDLOrCall { current.mayChangeData = true }
                }
            }
        case FrontendMessageID.close.rawValue:
            guard let body, body.count >= 2, body[0] == UInt8(ascii: "S") else { break }
            let name = String(decoding: body.dropFirst().prefix { $0 != 0 }, as: UTF8.self)
            preparedMessages[name] = nil
            statementText[name] = nil
        case FrontendMessageID.sync.rawValue, FrontendMessageID.functionCall.rawValue:
            return true
        default: break
        }
        return false
    }

    mutating func track(sql text: String) {
        let kind = SQLText.classify(text)
        switch kind {
        case .setting:
            let words = SQLText.leadingWords(text, count: 3)
            guard words.count >= 2 else { break }
            let name = (words[1] == "SESSION" && words.count > 2 ? words[2] : words[1]).lowercased()
            uncommitted.append((unitsSent, name, words[0] == "SET" ? text : nil))
        case .discardAll:
            if SQLText.leadingWords(text, count: 1).first == "DISCARD" {
                // DISCARD ALL cannot run inside a transaction block: it takes effect at once.
                settings = []; uncommitted = []; sqlPrepared = [:]; preparedMessages = [:]; unreplayable = []
            } else {
                uncommitted.append((unitsSent, "*", nil)) // RESET ALL is transactional like SET
            }
        case .prepare:
            if let name = SQLText.preparedName(text) { sqlPrepared[name] = text }
        case .deallocate:
            // SQL DEALLOCATE also drops protocol-level statements: they share one namespace.
            if let name = SQLText.preparedName(text) {
                if name == "all" { sqlPrepared = [:]; preparedMessages = [:] } else { sqlPrepared[name] = nil; preparedMessages[name] = nil }
            }
        default: break
        }
        unreplayable.formUnion(SQLText.unreplayableState(text))
    }

    /// Client messages that rebuild the tracked state on a fresh connection, and how many ReadyForQuery
    /// answers they earn (so the caller can swallow them).
    public func replayMessages() -> (bytes: [UInt8], readyForQueryCount: Int) {
        var w = ByteWriter()
        var count = 0
        for s in settings { FrontendMessage.query(s.text).encode(into: &w); count += 1 }
        for (_, text) in sqlPrepared.sorted(by: { $0.key < $1.key }) { FrontendMessage.query(text).encode(into: &w); count += 1 }
        // One Sync per Parse: a statement that fails to prepare must not make the follower skip the rest.
        for (_, message) in preparedMessages.sorted(by: { $0.key < $1.key }) {
            w.writeBytes(message)
            w.beginMessage(FrontendMessageID.sync.rawValue); w.endMessage()
            count += 1
        }
        return (w.bytes, count)
    }
}
