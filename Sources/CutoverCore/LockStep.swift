// Sync mirroring as a pure state machine: one unit of work at a time, leader then follower (COMMIT the
// other way round), autocommit writes wrapped in an implicit transaction. Events in, actions out; no I/O.
import CutoverProtocol

/// The lock-step of one session. The session feeds it client bytes (cut into units by `SessionTracker`)
/// and the ReadyForQuery answers of both sides, and runs the actions it returns.
public struct LockStep: Sendable {
    public enum Stage: Equatable, Sendable {
        /// Sent to the leader; its ReadyForQuery will be held until the follower has run the unit too.
        case leaderFirst([UInt8])
        case followerAfterLeader
        /// A COMMIT: the follower commits first, the leader last, so a conflicting transaction blocked on
        /// the leader's locks cannot reach the follower before this one has committed there.
        case followerFirst([UInt8])
        case leaderAfterFollower
        /// An autocommit write inside an implicit transaction, so it keeps its row locks on the leader until
        /// the follower has applied it: BEGIN+unit on the leader, then on the follower, COMMIT on the
        /// follower, COMMIT on the leader. The client sees only its own statement's answers.
        case wrappedLeader([UInt8])
        case wrappedFollower(leaderFailed: Bool)
        case wrappedFollowerCommit(leaderFailed: Bool)
        case wrappedLeaderCommit
        /// COPY FROM STDIN: the data streams to both sides at once until the leader finishes.
        case copyBoth
    }

    public enum Action: Equatable, Sendable {
        case toLeader([UInt8])
        case toFollower([UInt8])
        /// Statements the proxy sends itself; their answers must be consumed, not forwarded.
        case toLeaderInternal([UInt8])
        case toFollowerInternal([UInt8])
        /// A unit went out: register it for comparison (`followerSent`: it went to the follower too).
        case unitStarted(WorkUnit, followerSent: Bool)
        case followerStarted
        case leaderStarted
        /// Hold the leader's ReadyForQuery that caused this action, and everything after it, from the client.
        case holdClient
        /// Let the held bytes go; `asIdle` rewrites the held ReadyForQuery's status to idle (the implicit
        /// transaction is over), `commitError` is the implicit COMMIT's failure to report first.
        case releaseClient(asIdle: Bool, commitError: StatementOutcome?)
        /// A wrapped autocommit write ended on both sides: whether each committed it (its COMMIT answered
        /// COMMIT; the proxy rolls both back when the leader's statement failed), and the follower's COMMIT's
        /// error if it failed with one (a deferred constraint). Comes before the release.
        case wrappedWriteEnded(leaderKept: Bool, followerKept: Bool, followerCommitError: StatementOutcome?)
    }

    public private(set) var stage: Stage?
    /// When the current stage began (the caller's clock, for the follower timeout).
    public private(set) var stageStartedAt: UInt64 = 0
    private var buffer: [UInt8] = []
    private var unitEnds: [(end: Int, unit: WorkUnit)] = []
    /// End of a Flush queued behind the unit in flight (the client waits for an answer to it).
    private var flushEnd: Int?

    /// Bytes of `buffer` already sent (consumed from the front lazily: no quadratic shifting when a
    /// pipelining client queues many units).
    private var head = 0
    /// The unit in flight, for a stand-in if the leader cancels it (see `followerCopy`).
    private var inFlight = WorkUnit()
    /// Part of the unit in flight went to both sides ahead of it (a Flush): it cannot be given a stand-in.
    private var partSentAhead = false
    private var nextUnitPartSent = false

    /// Client bytes queued behind the unit in flight (the session stops reading the client past a bound).
    public var queuedBytes: Int { buffer.count - head }

    /// Nothing is in flight and all that is queued is a unit not yet complete: only more of the client's
    /// bytes can move things on, so the session must go on reading however much that is (a statement or a
    /// Bind larger than the queue's bound arrives in many reads; `max_message_size` bounds each message).
    public var awaitsRestOfUnit: Bool { stage == nil && hasFollower && unitEnds.isEmpty && flushEnd == nil && queuedBytes > 0 }

    /// Takes `count` bytes from the front of the queue; offsets in `unitEnds`/`flushEnd` are relative to `head`.
    private mutating func take(_ count: Int) -> [UInt8] {
        let out = Array(buffer[head..<(head + count)])
        head += count
        for i in unitEnds.indices { unitEnds[i].end -= count }
        if let end = flushEnd { flushEnd = end > count ? end - count : nil }
        if head == buffer.count { buffer.removeAll(keepingCapacity: true); head = 0 }
        else if head > 65536 && head * 2 > buffer.count { buffer.removeFirst(head); head = 0 }
        return out
    }
    /// False once mirroring stopped: whatever is queued goes to the leader alone.
    public private(set) var hasFollower = true

    public init() {}

    /// Nothing in flight and nothing queued. (Pattern matching, not `==`: this runs on every chunk, and
    /// Equatable on the payload-carrying enum is a generic call.)
    @inline(__always) public var isQuiet: Bool {
        if case .none = stage { return buffer.count == head }
        return false
    }

    /// A unit is in flight.
    @inline(__always) public var isBusy: Bool {
        if case .none = stage { return false }
        return true
    }

    public static let begin: [UInt8] = encoded("BEGIN")
    public static let commit: [UInt8] = encoded("COMMIT")
    public static let rollback: [UInt8] = encoded("ROLLBACK")
    /// What the follower runs instead of a unit cancelled on the leader: a statement that fails as a cancel
    /// does, leaving the follower's transaction where the leader's is (aborted, or nothing done), at once.
    /// Running the unit itself would keep the client waiting for the follower to do what it cancelled
    /// (`pg_sleep(30)`), up to `follower_timeout`.
    public static let cancelledOnLeader: [UInt8] = encoded(cancelledText)
    static let cancelledText =
        "DO $cutover$BEGIN RAISE EXCEPTION USING ERRCODE = '57014', MESSAGE = 'canceling statement due to user request (cancelled on the leader; not run here)'; END$cutover$"
    static func encoded(_ q: String) -> [UInt8] { var w = ByteWriter(); FrontendMessage.query(q).encode(into: &w); return w.bytes }

    /// A unit of data-modifying statements (DML, or a WITH that modifies) run outside a transaction:
    /// wrapped in an implicit transaction.
    public static func isAutocommitWrite(_ unit: WorkUnit) -> Bool {
        !unit.statements.isEmpty && !unit.commits && unit.statements.allSatisfy { SQLBytes.modifiesData($0) }
    }

    static let stdin = Array("stdin".utf8)

    /// What the follower runs of a unit whose statement number `cancelled` (0-based; nil: none) the leader
    /// ended with a cancel: that statement is replaced by one failing the same way at once, so the
    /// follower's transaction ends where the leader's did without running what was cancelled, while what ran
    /// before it in the unit runs there too. A simple Query is replaced whole only when it is one statement;
    /// in an extended unit the cancelled statement's Execute is replaced by the proxy's own statement
    /// (`cutover_cancelled`: a name of its own, so the client's unnamed statement and portal stay as they
    /// are). Only a read or DML is replaced (a CALL or DO may have committed inside itself), and never in a
    /// unit part of which went to the follower ahead of it.
    static func followerCopy(of bytes: [UInt8], unit: WorkUnit, cancelled: Int?, partSentAhead: Bool) -> [UInt8] {
        guard let cancelled, !partSentAhead, cancelled < unit.statements.count else { return bytes }
        var text = unit.statements[cancelled]
        guard text.withUTF8({ !SQLBytes.mayHoldSeveralStatements(UnsafeRawBufferPointer($0)) }) else { return bytes }
        switch SQLBytes.leadingKeyword(text) {
        case .select, .insert, .update, .delete, .merge, .with: break
        default: return bytes
        }
        var out: [UInt8] = []
        var executes = 0, queries = 0, replaced = false
        bytes.withUnsafeBytes { raw in
            let whole = CapturedUnit.forEachMessage(raw) { id, _, range in
                if id == FrontendMessageID.query.rawValue {
                    queries += 1
                    out += raw[range]
                } else if id == FrontendMessageID.execute.rawValue {
                    if executes == cancelled { out += cancelledExecute; replaced = true } else { out += raw[range] }
                    executes += 1
                } else {
                    out += raw[range]
                }
            }
            if whole < raw.count { out += raw[whole...] }
        }
        if queries == 1 && executes == 0 && unit.statements.count == 1 { return cancelledOnLeader }
        return replaced && queries == 0 ? out : bytes
    }

    /// The stand-in for one Execute: the proxy's own statement raising a cancel's error, under names of its own.
    static let cancelledExecute: [UInt8] = {
        let name = "cutover_cancelled"
        var w = ByteWriter()
        w.beginMessage(FrontendMessageID.parse.rawValue); w.writeCString(name); w.writeCString(cancelledText); w.writeBytes([0, 0]); w.endMessage()
        w.beginMessage(FrontendMessageID.bind.rawValue); w.writeCString(name); w.writeCString(name); w.writeBytes([0, 0, 0, 0, 0, 0]); w.endMessage()
        w.beginMessage(FrontendMessageID.execute.rawValue); w.writeCString(name); w.writeBytes([0, 0, 0, 0]); w.endMessage()
        // Closed first: a statement of that name left by an earlier stand-in would fail this Parse.
        return CapturedUnit.closeStatement(name) + w.bytes
    }()

    public static func isCopyIn(_ unit: WorkUnit) -> Bool {
        unit.statements.contains { SQLBytes.leadingKeyword($0) == .copy && SQLBytes.contains($0, lowercased: stdin) }
    }

    // MARK: events

    /// Client bytes; `units` are the units that end in them (end offsets), `flushAt` the end of a Flush
    /// after the last of them, `status` the session's transaction status now.
    public mutating func clientSent(_ bytes: [UInt8], units: [(endOffset: Int, unit: WorkUnit)], flushAt: Int?,
                                    status: TransactionStatus, now: UInt64) -> [Action] {
        if stage == .copyBoth && queuedBytes == 0 {
            // COPY data (and CopyDone) go to both sides as they arrive.
            return units.map { .unitStarted($0.unit, followerSent: true) } + [.toLeader(bytes), .toFollower(bytes)]
        }
        let base = buffer.count - head
        buffer.append(contentsOf: bytes)
        for (end, unit) in units { unitEnds.append((base + end, unit)) }
        if let flushAt, unitEnds.last.map({ $0.end < base + flushAt }) ?? true { flushEnd = base + flushAt }
        return pump(status: status, now: now)
    }

    /// The leader's ReadyForQuery for the unit in flight (`cancelled`: the number of its statement that
    /// ended in a cancel, 57014, if one did: the follower gets a stand-in for it, see `followerCopy`).
    public mutating func leaderReady(status: TransactionStatus, cancelled: Int? = nil, now: UInt64) -> [Action] {
        switch stage {
        case .leaderFirst(let unit)?:
            guard hasFollower else {
                // The follower went away while the leader ran this unit: nothing to wait for.
                stage = nil
                return pump(status: status, now: now)
            }
            stage = .followerAfterLeader
            stageStartedAt = now
            return [.holdClient, .followerStarted, .toFollower(Self.followerCopy(of: unit, unit: inFlight, cancelled: cancelled, partSentAhead: partSentAhead))]
        case .wrappedLeader(let unit)?:
            let failed = status == .failedTransaction
            guard hasFollower else { return [.holdClient] + endOnLeader(failed: failed, now: now) }
            stage = .wrappedFollower(leaderFailed: failed)
            stageStartedAt = now
            return [.holdClient, .followerStarted, .toFollowerInternal(Self.begin),
                    .toFollower(Self.followerCopy(of: unit, unit: inFlight, cancelled: cancelled, partSentAhead: partSentAhead))]
        case .leaderAfterFollower?, .copyBoth?:
            stage = nil
            return pump(status: status, now: now)
        default:
            return []
        }
    }

    /// The answer to the leader's implicit COMMIT/ROLLBACK.
    public mutating func leaderInternalReady(commitOutcome: StatementOutcome?, status: TransactionStatus, now: UInt64) -> [Action] {
        guard stage == .wrappedLeaderCommit else { return [] }
        stage = nil
        let failure = commitOutcome?.sqlState == nil ? nil : commitOutcome
        var actions: [Action] = []
        if let followerKept = followerKeptWrapped {
            actions.append(.wrappedWriteEnded(leaderKept: Self.committed(commitOutcome), followerKept: followerKept,
                                              followerCommitError: followerCommitFailure?.outcome))
        }
        followerKeptWrapped = nil
        followerCommitFailure = nil
        return actions + [.releaseClient(asIdle: true, commitError: failure)] + pump(status: .idle, now: now)
    }

    /// The follower's answer to the wrapped write's COMMIT, kept until the leader's (nil: no follower took part).
    private var followerKeptWrapped: Bool?
    /// Boxed: the session reads its LockStep on every chunk, and an outcome stored inline (strings, a tag)
    /// lengthened every such read (measured: +50 instructions per mirrored query).
    private var followerCommitFailure: FailedCommit?

    private final class FailedCommit: Sendable {
        let outcome: StatementOutcome
        init(_ outcome: StatementOutcome) { self.outcome = outcome }
    }

    /// A COMMIT that committed: no error, and not PostgreSQL's ROLLBACK tag for a failed transaction's COMMIT.
    static func committed(_ outcome: StatementOutcome?) -> Bool {
        guard let outcome, outcome.sqlState == nil else { return false }
        return outcome.tag == "COMMIT"
    }

    /// The follower's ReadyForQuery for the unit in flight.
    public mutating func followerReady(status: TransactionStatus, now: UInt64) -> [Action] {
        switch stage {
        case .followerFirst(let unit)?:
            stage = .leaderAfterFollower
            stageStartedAt = now
            return [.leaderStarted, .toLeader(unit)]
        case .followerAfterLeader?:
            stage = nil
            return [.releaseClient(asIdle: false, commitError: nil)] + pump(status: status, now: now)
        case .wrappedFollower(let leaderFailed)?:
            stage = .wrappedFollowerCommit(leaderFailed: leaderFailed)
            stageStartedAt = now
            return [.toFollowerInternal(leaderFailed ? Self.rollback : Self.commit)]
        default:
            return []
        }
    }

    /// The answer to the follower's implicit COMMIT/ROLLBACK (`commitOutcome`: its outcome).
    public mutating func followerInternalReady(commitOutcome: StatementOutcome?, now: UInt64) -> [Action] {
        guard case .wrappedFollowerCommit(let failed)? = stage else { return [] }
        followerKeptWrapped = Self.committed(commitOutcome)
        followerCommitFailure = commitOutcome.flatMap { $0.sqlState == nil ? nil : FailedCommit($0) }
        return endOnLeader(failed: failed, now: now)
    }

    /// Mirroring stopped (follower lost, timed out, overflowed): finish the unit on the leader alone and
    /// send everything queued straight to it from now on. A wrapped autocommit write is committed on the
    /// leader even when the client has already left: its CommandComplete (`UPDATE 1`) went out before the
    /// held ReadyForQuery, and PostgreSQL sends that only once the statement is committed, so the client may
    /// count on it. The follower's missing write is a recorded divergence (the caller marks the route).
    public mutating func followerGone(status: TransactionStatus, now: UInt64) -> [Action] {
        hasFollower = false
        var actions: [Action] = []
        switch stage {
        case .followerFirst(let unit)?:
            stage = .leaderAfterFollower
            actions = [.leaderStarted, .toLeader(unit)]
        case .followerAfterLeader?:
            stage = nil
            actions = [.releaseClient(asIdle: false, commitError: nil)]
        case .wrappedFollower(let failed)?, .wrappedFollowerCommit(let failed)?:
            actions = endOnLeader(failed: failed, now: now)
        case .copyBoth?:
            stage = nil
        default:
            break
        }
        return actions + pump(status: status, now: now)
    }

    /// The client left: what it queued never reached either side, so it is dropped on both.
    public mutating func dropQueued() {
        buffer = []
        head = 0
        unitEnds = []
        flushEnd = nil
    }

    // MARK: dispatch

    private mutating func endOnLeader(failed: Bool, now: UInt64) -> [Action] {
        stage = .wrappedLeaderCommit
        stageStartedAt = now
        return [.toLeaderInternal(failed ? Self.rollback : Self.commit)]
    }

    /// Starts the next complete unit, if none is in flight.
    private mutating func pump(status: TransactionStatus, now: UInt64) -> [Action] {
        guard stage == nil, queuedBytes > 0 else { return [] }
        guard hasFollower else {
            let all = take(queuedBytes)
            unitEnds = []
            flushEnd = nil
            return [.toLeader(all)]
        }
        guard let first = unitEnds.first else {
            // A Flush without Sync (Describe before binding): the client waits for an answer now. Nothing
            // runs because of it, so both sides get it at once.
            guard let end = flushEnd else { return [] }
            let partial = take(end)
            flushEnd = nil
            nextUnitPartSent = true
            return [.toLeader(partial), .toFollower(partial)]
        }
        unitEnds.removeFirst()
        let unit = take(first.end)
        stageStartedAt = now
        inFlight = first.unit
        partSentAhead = nextUnitPartSent
        nextUnitPartSent = false
        if Self.isCopyIn(first.unit) {
            stage = .copyBoth
            return [.unitStarted(first.unit, followerSent: true), .toLeader(unit), .toFollower(unit)]
        }
        if status == .idle && Self.isAutocommitWrite(first.unit) {
            stage = .wrappedLeader(unit)
            var wrapped = first.unit
            wrapped.wrappedInTransaction = true
            return [.unitStarted(wrapped, followerSent: false), .toLeaderInternal(Self.begin), .toLeader(unit)]
        }
        if first.unit.commits {
            stage = .followerFirst(unit)
            return [.unitStarted(first.unit, followerSent: false), .followerStarted, .toFollower(unit)]
        }
        stage = .leaderFirst(unit)
        return [.unitStarted(first.unit, followerSent: false), .toLeader(unit)]
    }
}

extension WorkUnit {
    public init(statements: [String], commits: Bool = false) {
        self.init()
        self.statements = StatementTexts(statements)
        self.commits = commits
    }
}
