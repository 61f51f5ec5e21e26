// Deterministic mirroring in the session: a write whose values differ per side runs on the leader rewritten
// to keep them (DeterministicWrite), the proxy reads them back right after the unit (a query of its own,
// its answer cut out of the client's stream), and the follower's copy of the unit waits for them and
// carries them as literals. What cannot be captured is recorded and marks the route out of sync.
import CutoverCore
import CutoverProtocol

/// A unit of the proxy's own on the leader: the lock-step's implicit BEGIN/COMMIT, or a capture's readback.
enum LeaderInternalKind: Equatable {
    case lockStep, readback
    /// Its answer needs nothing (a client's statement put back after a failed replay).
    case ignored
    /// A captured named statement parsed again with its rewritten text; the client's Parse of it, to put
    /// back if that fails (the Close before it has run: the client's statement would be gone).
    case replay(name: String, clientParse: [UInt8])
}

/// One session's capture bookkeeping (allocated at its first captured write).
final class CaptureState {
    /// Named statements whose Parse reached the leader rewritten: a Bind of one executes a capture.
    var named: [String: CapturedWrite] = [:]
    /// Named statements whose Parse needed a capture but could not be rewritten (it straddled two reads):
    /// executing one is non-deterministic.
    var unrewritten: [String: String] = [:]
    /// The unnamed statement, if the unit's Parse of it was captured.
    var unnamed: CapturedWrite?
    /// The client's Parse of each captured named statement, as it was when it went to the leader.
    var parses: [String: [UInt8]] = [:]

    // The unit being scanned (async) or sent (sync).
    /// Captured statements it executes, in order.
    var executions: [CaptureExecution] = []
    /// The client's text of the unnamed statement if this unit parsed it (the follower's copy can carry
    /// the values of a Bind of it only then).
    var unnamedText: String?
    /// It runs COPY.
    var unitHasCopy = false
    /// It ends a transaction after a captured execution: a value constant through the transaction may not
    /// serve the executions on both sides of that.
    var unitEndsTransactionAfterCapture = false
    /// Settings a rewritten statement it runs fills without being counted as an execution (a Bind of the
    /// unnamed statement parsed in an earlier unit): to be emptied behind it.
    var unitFillsUncounted = 0
    /// Why it cannot be captured, if it cannot.
    var refusal: String?
    /// The unit's statement text, for the record.
    var statement: String?

    /// Captures whose readback has not answered yet, oldest first; each resolves the first unresolved
    /// `.unit` in `held`.
    var awaiting = 0
    /// What the follower gets, in order, once the captures before it are resolved.
    var held: [HeldForFollower] = [] { didSet { if held.isEmpty { heldSince = nil } else if heldSince == nil { heldSince = heldClock() } } }
    /// Since when (loop ns) something is held: past `follower_timeout` the session stops mirroring.
    var heldSince: UInt64?
    /// The loop's clock, set by the session that owns this state.
    var heldClock: () -> UInt64 = { 0 }
    /// Readback rows received, by the number of the leader's internal unit they answer (several can come
    /// in one read before their boundaries are handled).
    var rows: [UInt64: [String?]] = [:]
    /// Lock-step: the captured executions of the unit sent to the leader, for its copy to the follower.
    var lockStepFollower: [CaptureExecution] = []
    /// Lock-step: part of the unit went out before a Flush.
    var lockStepUnitSplit = false
    /// Async: the chunk being forwarded: messages the leader gets rewritten (and readbacks), and its
    /// captured units for the follower's copy.
    var leaderEdits: [CaptureEdit] = []
    var followerCaptures: [(range: Range<Int>, executions: [CaptureExecution])] = []
    /// A statement that may change the catalog went to the leader: it is read again at the next idle boundary.
    var ddlSeen = false
    /// Mirroring ended while the leader was busy: its captured statements get the client's texts back at
    /// the next idle boundary (`restoreClientStatementsOnLeader`).
    var restoreWhenIdle = false
    /// Settings a unit with COPY filled: emptied at the next idle boundary (no query may follow a COPY's
    /// unit on the leader, which is then in COPY mode).
    var emptyWhenIdle = 0
    /// Lock-step: the unit now going to the leader went to the follower first (it commits).
    var followerWentFirst = false
    /// Lock-step: a COPY's unit has gone; what follows is its data, until the stage changes.
    var inCopyData = false

    /// How many settings the unit's rewritten statements filled so far (what an emptying query must empty).
    var filledThisUnit: Int { max(unitFillsUncounted, executions.map(\.write.settings.count).max() ?? 0) }

    func startUnit() {
        unitHasCopy = false
        unitFillsUncounted = 0
        unitEndsTransactionAfterCapture = false
        unnamedText = nil
        executions.removeAll(keepingCapacity: true)
        refusal = nil
        statement = nil
    }
}

/// Follower-bound bytes held behind a capture not yet read back.
enum HeldForFollower {
    case bytes([UInt8])
    /// A captured unit: the client's messages, rendered with the leader's values of each execution once
    /// they are known.
    case unit(template: [UInt8], executions: [CaptureExecution], values: [[String?]]?)
}

/// One message of a client chunk as the capture sees it.
struct CaptureEdit {
    var range: Range<Int>
    var bytes: [UInt8]
}

extension ClientSession {
    // MARK: deciding, message by message

    static let ddlWords: Set<String> = ["CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE"]
    static let copyWord = Array("copy".utf8)

    /// At an idle boundary after DDL: the leader's catalog is read again (the route's other sessions use it too).
    func refreshCatalogAfterDDL() {
        guard let s = cold?.captures, s.ddlSeen, transactionStatus == .idle, let route else { return }
        s.ddlSeen = false
        server.refreshCatalog(route, side: sessionPhase.leader)
    }

    var captureState: CaptureState {
        let c = coldState
        if let s = c.captures { return s }
        let s = CaptureState()
        let loop = self.loop
        s.heldClock = { loop.nanoseconds }
        c.captures = s
        return s
    }

    /// A Query, Parse or Bind on its way to the leader while mirroring: whether it runs a write that must
    /// be captured. Returns the leader's replacement of the message, if it has one. `whole`: the message is
    /// complete in the bytes being forwarded (else it can only be recorded, not rewritten).
    func captureSees(id: UInt8, body: UnsafeRawBufferPointer, whole: Bool) -> [UInt8]? {
        switch id {
        case FrontendMessageID.query.rawValue, FrontendMessageID.parse.rawValue:
            // Most statements are reads: decided on the bytes, before any String is made.
            guard let raw = CapturedUnit.textBytes(id: id, body: body) else { return nil }
            let keyword = SQLBytes.leadingKeyword(raw)
            if keyword.endsTransaction || keyword == .rollback || keyword == .abort, let s = cold?.captures, !s.executions.isEmpty {
                s.unitEndsTransactionAfterCapture = true
            }
            if keyword.mayBeDDLOrCall, Self.ddlWords.contains(SQLText.leadingWords(String(decoding: raw, as: UTF8.self), count: 1).first ?? "") {
                captureState.ddlSeen = true
            }
            let mayWrite = SQLBytes.isWrite(raw, keyword: keyword) || SQLBytes.mayHoldSeveralStatements(raw)
            // A Parse may reuse the name of a captured statement: that one is forgotten below.
            guard mayWrite || (id == FrontendMessageID.parse.rawValue && cold?.captures != nil), let route else { return nil }
            // A COPY anywhere in it (`INSERT …; COPY t FROM STDIN` in one Query): nothing of the proxy's own may
            // follow the unit, which leaves the leader in COPY mode.
            if keyword == .copy || (SQLBytes.mayHoldSeveralStatements(raw) && SQLBytes.contains(raw, lowercased: Self.copyWord)) {
                captureState.unitHasCopy = true
            }
            guard let text = String(validating: raw, as: UTF8.self) else {
                // Rewriting goes through Swift strings: text that is not UTF-8 (a LATIN1 client) would be altered.
                let s = captureState
                let reason = "the statement is not UTF-8 (client_encoding), so it is not rewritten and its values are not captured"
                if id == FrontendMessageID.parse.rawValue, let name = CapturedUnit.statementName(id: id, body: body) {
                    forgetStatement(name, s)
                    if mayWrite { s.unrewritten[name] = reason }
                } else if mayWrite {
                    refuseUnit(s, nil, reason)
                }
                return nil
            }
            let name = id == FrontendMessageID.parse.rawValue ? CapturedUnit.statementName(id: id, body: body) : nil
            let plan = mayWrite ? server.writePlan(route, text, leader: sessionPhase.leader) : .asSent
            let s: CaptureState
            switch plan {
            case .asSent, .needsCatalog:
                guard let existing = cold?.captures else { return nil }
                s = existing
                if let name { forgetStatement(name, s) }
                return nil
            case .nondeterministic(let reason):
                s = captureState
                if let name { forgetStatement(name, s); s.unrewritten[name] = reason } else { refuseUnit(s, text, reason) }
                return nil
            case .captured(let write):
                s = captureState
                guard whole else {
                    let reason = "the statement straddles two reads (\(body.count) bytes), so it could not be rewritten"
                    if let name { forgetStatement(name, s); s.unrewritten[name] = reason } else { refuseUnit(s, text, reason) }
                    return nil
                }
                if let name {
                    forgetStatement(name, s)
                    if name.isEmpty { s.unnamed = write; s.unnamedText = text } else {
                        s.named[name] = write
                        // The client's Parse as it was (its parameter types), for the follower's copy of later units.
                        var w = ByteWriter(capacity: body.count + 5)
                        w.beginMessage(id)
                        w.writeBytes(body)
                        w.endMessage()
                        s.parses[name] = w.bytes
                    }
                } else {
                    s.executions.append(CaptureExecution(write: write, text: text, statement: nil, parse: nil))
                    s.statement = s.statement ?? text
                }
                return CapturedUnit.replacingText(id: id, body: body, with: write.leaderText)
            }
        case FrontendMessageID.bind.rawValue:
            guard let s = cold?.captures, let name = CapturedUnit.statementName(id: id, body: body) else { return nil }
            if name.isEmpty, let unnamed = s.unnamed, s.unnamedText == nil {
                refuseUnit(s, nil, "a Bind of the unnamed statement parsed in an earlier unit")
                s.unitFillsUncounted = max(s.unitFillsUncounted, unnamed.settings.count)
            } else if let write = name.isEmpty ? s.unnamed : s.named[name] {
                s.executions.append(name.isEmpty ? CaptureExecution(write: write, text: s.unnamedText, statement: nil, parse: nil)
                                                 : CaptureExecution(write: write, text: nil, statement: name, parse: s.parses[name] ?? tracker.preparedMessages[name]))
                s.statement = s.statement ?? write.leaderText
            } else if let reason = s.unrewritten[name] {
                refuseUnit(s, nil, reason)
            }
            return nil
        default:
            return nil
        }
    }

    private func forgetStatement(_ name: String, _ s: CaptureState) {
        if name.isEmpty { s.unnamed = nil }
        s.named[name] = nil
        s.unrewritten[name] = nil
        s.parses[name] = nil
    }

    private func refuseUnit(_ s: CaptureState, _ text: String?, _ reason: String) {
        if s.refusal == nil { s.refusal = reason }
        if s.statement == nil { s.statement = text }
    }

    /// What a unit that ended needs behind it on the leader.
    struct UnitCaptures {
        /// Its captured executions, to be read back (the readback empties their settings too).
        var executions: [CaptureExecution] = []
        /// Otherwise: how many settings its rewritten statements filled, to be emptied (0: none).
        var settingsToEmpty = 0
    }

    /// The unit ends (its Query or Sync went by). Returns the captured executions the unit runs, if it can
    /// have them captured: begun in the bytes at hand (`begunHere`), and either one execution or several of
    /// one statement whose values all serve a batch (`CapturedWrite.repeatable`: a driver's batch, one Parse
    /// and many Binds before one Sync), in one transaction. Anything else that differs per side is recorded
    /// as non-deterministic and marks the route out of sync; the settings its rewritten statements filled
    /// are then emptied instead of read.
    func captureUnitEnds(begunHere: Bool) -> UnitCaptures {
        guard let s = cold?.captures else { return UnitCaptures() }
        defer { s.startUnit() }
        let filled = s.filledThisUnit
        var refusal = s.refusal
        if refusal == nil && s.executions.count > 1 {
            let first = s.executions[0].write
            if s.executions.contains(where: { $0.write != first }) {
                refusal = "the unit runs \(s.executions.count) executions of different statements whose values differ per side; several of one statement can be captured"
            } else if !first.repeatable {
                refusal = "the unit runs the statement \(s.executions.count) times, and one of its values (per statement, or per row returned) cannot be captured for each execution"
            } else if s.unitEndsTransactionAfterCapture {
                refusal = "the unit runs the statement \(s.executions.count) times and ends a transaction between them"
            }
        }
        if refusal == nil && !s.executions.isEmpty && !begunHere {
            refusal = "the unit began in an earlier read, so the follower's copy of it was on its way before the leader's values could be read back"
        }
        if refusal == nil && !s.executions.isEmpty && s.unitHasCopy {
            // Its readback would reach a backend in COPY mode.
            refusal = "the unit also runs COPY, so the leader's values cannot be read back behind it"
        }
        if let refusal {
            recordNondeterministic(s.statement, refusal)
            if s.unitHasCopy {
                s.emptyWhenIdle = max(s.emptyWhenIdle, filled)
                return UnitCaptures()
            }
            return UnitCaptures(settingsToEmpty: filled)
        }
        return UnitCaptures(executions: s.executions, settingsToEmpty: s.executions.isEmpty ? filled : 0)
    }

    /// At an idle boundary: what a unit with COPY filled is emptied now (a unit of the proxy's own).
    func emptySettingsLeftByCopy() {
        guard let s = cold?.captures, s.emptyWhenIdle > 0, let leader, pendingReadyForQuery == 0, lockStepIsQuiet else { return }
        let count = s.emptyWhenIdle
        s.emptyWhenIdle = 0
        leader.addInternal()
        leaderInternalKinds.append(.ignored)
        leader.send(Self.emptying(count))
    }

    /// The Query message of `DeterministicWrite.emptyingQuery`.
    static func emptying(_ count: Int) -> [UInt8] {
        var w = ByteWriter()
        FrontendMessage.query(DeterministicWrite.emptyingQuery(settings: count)).encode(into: &w)
        return w.bytes
    }

    /// The proxy's own query emptying `count` settings, right behind the unit that ends at the end of the
    /// bytes sent before it (see `readbackBytes`); its answer is not needed.
    func emptyingBytes(settings count: Int, clientUnitsAhead: Int32) -> [UInt8] {
        leader?.addInternal(afterClientUnits: clientUnitsAhead)
        leaderInternalKinds.append(.ignored)
        return Self.emptying(count)
    }

    /// Records a write the follower cannot store identically, and marks the route out of sync.
    func recordNondeterministic(_ statement: String?, _ reason: String) {
        server.recordDivergence(session: self, kind: .nondeterministic, statement: statement, leader: nil, follower: nil,
                                leaderMs: nil, followerMs: nil, detail: reason)
        route?.markOutOfSync("session \(id): nondeterministic: \(reason)")
    }

    // MARK: the leader's readback

    /// The readback the leader runs right behind the unit that ends at the end of the bytes sent before it
    /// (`clientUnitsAhead` of the client's units, that one included, are still to be answered then).
    func readbackBytes(for executions: [CaptureExecution], clientUnitsAhead: Int32) -> [UInt8] {
        let write = executions[0].write // one statement (see `captureUnitEnds`)
        leader?.addInternal(afterClientUnits: clientUnitsAhead)
        leaderInternalKinds.append(.readback)
        captureState.awaiting += 1
        var w = ByteWriter()
        FrontendMessage.query(write.readbackQuery).encode(into: &w)
        return w.bytes
    }

    /// A row answering one of the proxy's own units on the leader: a readback's values.
    func backendInternalRow(_ link: BackendLink, _ body: UnsafeRawBufferPointer, unit: UInt64) {
        guard link === leader, let s = cold?.captures, s.awaiting > 0 else { return }
        var r = ByteReader(Array(body)[...], context: "DataRow")
        guard let count = try? r.readInt16() else { return }
        var values: [String?] = []
        for _ in 0..<max(0, Int(count)) {
            guard let n = try? r.readInt32() else { return }
            if n < 0 { values.append(nil); continue }
            guard let bytes = try? r.readBytes(Int(n)) else { return }
            // Empty: emptied by the previous readback and not computed since (see `readbackQuery`).
            values.append(n == 0 ? nil : String(decoding: bytes, as: UTF8.self))
        }
        s.rows[unit] = values
    }

    /// A unit of the proxy's own ended on the leader (`unit`: its number on the link): a readback resolves
    /// the oldest capture waiting. Returns false for a lock-step unit (the caller hands it to the lock-step).
    func leaderInternalEnded(unit: UInt64, outcome: StatementOutcome?) -> Bool {
        guard let c = cold, !c.leaderInternalKinds.isEmpty else { return false }
        let kind = c.leaderInternalKinds.removeFirst()
        if case .replay(let name, let clientParse) = kind {
            if outcome?.sqlState != nil {
                // The rewritten text did not parse there: its executions are no longer captured (recorded when
                // they run), and the client's statement is put back as it was, if nothing of the client's is in
                // flight to the leader (an internal unit must not go behind one it cannot count: lock-step may
                // hold units not yet sent); otherwise the client's next Bind of it fails (26000), visibly.
                c.captures?.named[name] = nil
                c.captures?.unrewritten[name] = "its rewritten text could not be prepared on the leader (\(outcome?.sqlState ?? ""))"
                if let leader, pendingReadyForQuery == 0, lockStepIsQuiet {
                    leader.addInternal()
                    c.leaderInternalKinds.append(.ignored)
                    leader.send(clientParse + CapturedUnit.sync)
                }
            }
            return true
        }
        if kind == .ignored { c.captures?.rows[unit] = nil; return true }
        guard kind == .readback, let s = c.captures else { return false }
        s.awaiting -= 1
        let values = s.rows.removeValue(forKey: unit)
        if let k = s.held.firstIndex(where: { if case .unit(_, _, nil) = $0 { return true } else { return false } }),
           case .unit(let template, let executions, _) = s.held[k], let write = executions.first?.write {
            // No row: the leader's statement failed before computing them; the follower's copy then fails too.
            if values?.contains(DeterministicWrite.notCaptured) == true {
                // Too large to capture: the follower runs the statement as the client wrote it.
                recordNondeterministic(executions.first?.text ?? write.leaderText, "the rows of an INSERT … SELECT were too large to capture (over \(DeterministicWrite.maximumRowBytes >> 20) MiB): the follower computed its own values")
                s.held[k] = .bytes(template)
            } else {
                var byExecution = write.valuesByExecution(values ?? [], executions: executions.count)
                if byExecution == nil {
                    recordNondeterministic(executions.first?.text ?? write.leaderText, "the leader computed a value another number of times than the unit's \(executions.count) executions")
                    byExecution = Array(repeating: [], count: executions.count)
                }
                s.held[k] = .unit(template: template, executions: executions, values: byExecution)
            }
        }
        releaseHeldForFollower()
        return true
    }

    // MARK: the follower's copy

    /// Follower-bound bytes: held behind a capture still being read back, else delivered as before.
    func toFollower(_ bytes: [UInt8], capture executions: [CaptureExecution]) {
        if !executions.isEmpty {
            captureState.held.append(.unit(template: bytes, executions: executions, values: nil))
        } else if let s = cold?.captures, !s.held.isEmpty {
            s.held.append(.bytes(bytes))
        } else {
            deliverToFollower(bytes)
        }
    }

    /// Sends what is held for the follower up to the first capture still unresolved.
    func releaseHeldForFollower() {
        guard let s = cold?.captures else { return }
        var out: [UInt8] = []
        var taken = 0
        release: for item in s.held {
            switch item {
            case .bytes(let b): out += b
            case .unit(let template, let executions, let values?):
                out += CapturedUnit.renderForFollower(template, executions: executions, values: values)
            case .unit(_, _, nil):
                break release
            }
            taken += 1
        }
        s.held.removeFirst(taken)
        if taken > 0, !s.held.isEmpty { s.heldSince = loop.nanoseconds }
        if !out.isEmpty { deliverToFollower(out) }
        // The transaction may have ended on the leader while this waited: the batch goes now.
        if s.held.isEmpty, transactionStatus == .idle, let c = cold, !c.followerOutbox.isEmpty { flushFollowerOutbox() }
    }

    /// The follower's bytes by the mode's usual way: the async batch, or at once.
    private func deliverToFollower(_ bytes: [UInt8]) {
        guard let follower else { return }
        if mirrorMode == .async && lockStepIsQuiet && follower.connection.readsOnDemand {
            let c = coldState
            c.followerOutbox.append(contentsOf: bytes)
            if c.followerOutbox.count >= Self.followerOutboxLimit { flushFollowerOutbox() }
            if !inFollowerReadList { server.readFollowerLater(self) }
        } else {
            // Units in these bytes count as sent now (the batch marks its own when it goes).
            let now = loop.nanoseconds
            var k = units.count
            while k > unitsHead, units[k - 1].followerSentAt == nil { k -= 1; units[k].followerSentAt = now }
            follower.send(bytes)
        }
    }

    /// Mirroring stopped: nothing is owed to a follower any more (the readbacks still end on the leader).
    func dropHeldForFollower() {
        cold?.captures?.held = []
    }

    /// Lock-step sends a unit that commits to the follower first, before the leader has computed anything:
    /// a captured write in it cannot get the leader's values. It is sent as it is and recorded (the route is
    /// marked); its leader copy then goes as sent too.
    func followerFirstUnit(_ bytes: [UInt8]) {
        var captured = false
        bytes.withUnsafeBytes { raw in
            CapturedUnit.forEachMessage(raw) { id, body, _ in
                if let route, let text = CapturedUnit.text(id: id, body: body), case .captured = server.writePlan(route, text, leader: sessionPhase.leader) {
                    captured = true
                } else if id == FrontendMessageID.bind.rawValue, let name = CapturedUnit.statementName(id: id, body: body),
                          cold?.captures?.named[name] != nil || (name.isEmpty && cold?.captures?.unnamed != nil) {
                    captured = true
                }
            }
        }
        guard captured else { return }
        captureState.followerWentFirst = true
        recordNondeterministic(nil, "a write whose values differ per side is in a unit that also commits (lock-step runs such a unit on the follower first, before the leader has computed them)")
    }

    // MARK: named statements

    /// When the session's follower starts (its named statements replayed with the client's texts) or the
    /// leader changes (the new leader has them with the client's texts, as a follower had): each named
    /// statement is planned again with this leader's catalog, and one that needs a capture is parsed again on
    /// the leader with its rewritten text (a unit of the proxy's own: Close, Parse, Sync). Without this a
    /// Bind of it would run the client's text on the leader, and the follower would get no values.
    func prepareCapturedStatementsOnLeader(leaderChanged: Bool) {
        guard let follower, let route, let leader, !tracker.preparedMessages.isEmpty else { return }
        let s = captureState
        // The old leader, now the follower, has these with their rewritten texts: it gets the client's back.
        let rewrittenOnFollower = leaderChanged ? Set(s.named.keys) : []
        var followerOut: [UInt8] = []
        var units: Int32 = 0, followerUnits: Int32 = 0
        var kinds: [LeaderInternalKind] = []
        s.named = [:]
        s.unrewritten = [:]
        s.parses = [:]
        s.unnamed = nil
        var out: [UInt8] = []
        for (name, parse) in tracker.preparedMessages.sorted(by: { $0.key < $1.key }) {
            let text: String? = parse.count > 5 ? parse.withUnsafeBytes { CapturedUnit.text(id: parse[0], body: UnsafeRawBufferPointer(rebasing: $0[5...])) } : nil
            guard let text else { continue }
            switch server.writePlan(route, text, leader: sessionPhase.leader) {
            case .captured(let write):
                // One Sync each: a Parse that fails skips only itself, not the statements after it.
                out += CapturedUnit.closeStatement(name)
                parse.withUnsafeBytes { out += CapturedUnit.replacingText(id: parse[0], body: UnsafeRawBufferPointer(rebasing: $0[5...]), with: write.leaderText) ?? [] }
                out += CapturedUnit.sync
                units += 1
                kinds.append(.replay(name: name, clientParse: parse))
                s.named[name] = write
                s.parses[name] = parse
            case .nondeterministic(let reason):
                s.unrewritten[name] = reason
            case .asSent, .needsCatalog:
                break
            }
            if rewrittenOnFollower.contains(name) {
                followerOut += CapturedUnit.closeStatement(name) + parse + CapturedUnit.sync
                followerUnits += 1
            }
        }
        if followerUnits > 0 {
            follower.addInternal(followerUnits)
            follower.send(followerOut)
        }
        guard units > 0 else { return }
        leader.addInternal(units)
        leaderInternalKinds += kinds
        leader.send(out)
    }

    /// Mirroring ended for this session (its follower was let go at a flip, or mirroring stopped): the
    /// leader's captured named statements are parsed again with the client's texts (the proxy's own Close,
    /// Parse, Sync each). Their rewritten texts would go on filling settings that no readback empties any
    /// more, and a listed value grows at every execution. Waits for an idle boundary if the leader is busy.
    func restoreClientStatementsOnLeader() {
        guard let s = cold?.captures, !s.named.isEmpty || s.unnamed != nil, let leader else { return }
        guard pendingReadyForQuery == 0, lockStepIsQuiet, transactionStatus == .idle else { s.restoreWhenIdle = true; return }
        s.restoreWhenIdle = false
        // What a rewritten statement ran since the last readback filled is emptied first.
        let filled = max(s.unnamed?.settings.count ?? 0, s.named.values.map(\.settings.count).max() ?? 0)
        var out = Self.emptying(filled)
        var units: Int32 = 1
        for name in s.named.keys.sorted() {
            guard let parse = tracker.preparedMessages[name] else { continue }
            out += CapturedUnit.closeStatement(name) + parse + CapturedUnit.sync
            units += 1
        }
        s.named = [:]
        s.parses = [:]
        s.unrewritten = [:]
        s.unnamed = nil
        guard units > 0 else { return }
        leader.addInternal(units)
        leaderInternalKinds += Array(repeating: .ignored, count: Int(units))
        leader.send(out)
    }

    // MARK: sending

    /// The capture lists of the chunk being scanned, emptied at its first capture.
    func captureChunk(_ chunk: inout ClientChunk) -> CaptureState {
        let s = captureState
        if !chunk.hasCaptures {
            chunk.hasCaptures = true
            s.leaderEdits.removeAll(keepingCapacity: true)
            s.followerCaptures.removeAll(keepingCapacity: true)
        }
        return s
    }

    /// Async mirroring of a chunk with captured units (or behind one still being read back): the leader
    /// gets its rewritten messages and the readbacks, the follower the client's bytes, each captured unit
    /// held until the leader's values for it are in.
    func forwardCaptured(_ bytes: UnsafeRawBufferPointer, _ chunk: ClientChunk) {
        let s = captureState
        if !chunk.hasCaptures { s.leaderEdits.removeAll(); s.followerCaptures.removeAll() }
        var leaderBytes: [UInt8] = []
        leaderBytes.reserveCapacity(bytes.count + 256)
        var at = 0
        for edit in s.leaderEdits {
            leaderBytes += bytes[at..<edit.range.lowerBound]
            leaderBytes += edit.bytes
            at = edit.range.upperBound
        }
        leaderBytes += bytes[at...]
        leader?.send(leaderBytes)
        guard follower != nil else { return }
        if !chunk.batching { for (_, unit) in chunkUnits { registerUnit(unit, followerSent: false) } }
        at = 0
        for (range, execution) in s.followerCaptures {
            if range.lowerBound > at { toFollower(Array(bytes[at..<range.lowerBound]), capture: []) }
            toFollower(Array(bytes[range]), capture: execution)
            at = range.upperBound
        }
        if at < bytes.count { toFollower(Array(bytes[at...]), capture: []) }
    }

    /// Lock-step: a unit (or the part before a Flush) on its way to the leader, rewritten where it runs a
    /// captured write, with the readback behind it. The follower's copy comes later (`.toFollower`).
    func leaderBytesInLockStep(_ bytes: [UInt8]) -> [UInt8] {
        let wentFirst = cold?.captures?.followerWentFirst ?? false
        cold?.captures?.followerWentFirst = false
        guard follower != nil, route != nil else { return bytes }
        // COPY data streams as it comes (chunks need not start at a message): the COPY's own unit is looked
        // at, what follows it in the copy is not.
        if case .copyBoth? = lockStep.stage {
            if cold?.captures?.inCopyData == true { return bytes }
            captureState.inCopyData = true
        } else if let s = cold?.captures {
            s.inCopyData = false
        }
        var out: [UInt8] = []
        var edited = false, endsUnit = false
        bytes.withUnsafeBytes { raw in
            let whole = CapturedUnit.forEachMessage(raw) { id, body, range in
                if id == FrontendMessageID.query.rawValue || id == FrontendMessageID.parse.rawValue || id == FrontendMessageID.bind.rawValue,
                   let replacement = captureSees(id: id, body: body, whole: true) {
                    out += replacement
                    edited = true
                } else {
                    out += raw[range]
                }
                endsUnit = id == FrontendMessageID.query.rawValue || id == FrontendMessageID.sync.rawValue
            }
            if whole < raw.count { out += raw[whole...] }
        }
        guard endsUnit else {
            if !bytes.isEmpty { captureState.lockStepUnitSplit = true }
            return edited ? out : bytes
        }
        if wentFirst {
            // The follower ran this unit first, as the client sent it (recorded in `followerFirstUnit`): its
            // Parses are rewritten for later units, but this unit's values cannot be read back for it: what
            // its rewritten statements filled is emptied behind it.
            let filled = cold?.captures?.filledThisUnit ?? 0
            let hasCopy = cold?.captures?.unitHasCopy ?? false
            cold?.captures?.startUnit()
            cold?.captures?.lockStepUnitSplit = false
            if filled > 0 && hasCopy { captureState.emptyWhenIdle = max(captureState.emptyWhenIdle, filled) }
            if filled > 0 && !hasCopy { return out + emptyingBytes(settings: filled, clientUnitsAhead: 1) }
            return edited ? out : bytes
        }
        let s = cold?.captures
        let ended = captureUnitEnds(begunHere: !(s?.lockStepUnitSplit ?? false))
        if !ended.executions.isEmpty {
            out += readbackBytes(for: ended.executions, clientUnitsAhead: 1)
            captureState.lockStepFollower = ended.executions
            edited = true
        } else if ended.settingsToEmpty > 0 {
            out += emptyingBytes(settings: ended.settingsToEmpty, clientUnitsAhead: 1)
            edited = true
        }
        s?.lockStepUnitSplit = false
        return edited ? out : bytes
    }
}
