// Mirroring: the follower connection, async and lock-step (sync) dispatch, unit comparison, degrading to
// out of sync, and phase changes applied at an idle boundary.
import CutoverCore
import CutoverProtocol
import CutoverRuntime

/// One unit of work on its way through leader and follower, until both answers are compared.
struct PendingUnit {
    var unit: WorkUnit
    var leaderSentAt: UInt64
    var followerSentAt: UInt64?
    var leader: UnitDigest?
    /// Set with `leader` (non-zero exactly when the leader has answered: cheaper to test than the digest).
    var leaderDoneAt: UInt64 = 0
    var follower: UnitDigest?
    /// Set with `follower`, likewise.
    var followerDoneAt: UInt64 = 0
    /// Position among the route's write units in the order the leader finished them (async order check).
    var leaderSeq: UInt64?
    let isWrite: Bool

    init(unit: WorkUnit, leaderSentAt: UInt64, followerSentAt: UInt64?) {
        self.unit = unit
        self.leaderSentAt = leaderSentAt
        self.followerSentAt = followerSentAt
        isWrite = unit.commits || unit.writes // classified by the tracker from the keyword it reads anyway
    }

    var leaderMs: Double? { leader == nil ? nil : Double(leaderDoneAt &- leaderSentAt) / 1e6 }
    var followerMs: Double? { follower == nil || followerSentAt == nil ? nil : Double(followerDoneAt &- followerSentAt!) / 1e6 }
}

extension ClientSession {
    // MARK: unit bookkeeping

    func registerUnit(_ unit: WorkUnit, followerSent: Bool) {
        let now = loop.nanoseconds
        units.append(PendingUnit(unit: unit, leaderSentAt: now, followerSentAt: followerSent ? now : nil))
    }

    func markFollowerSent() { if unitsHead < units.count { units[units.count - 1].followerSentAt = loop.nanoseconds } }
    func markLeaderSent() { if unitsHead < units.count { units[units.count - 1].leaderSentAt = loop.nanoseconds } }

    /// The first unit at or after `cursor` still waiting for `side`'s answer. Each side answers in order,
    /// so the search starts where the last answer went and is O(1); a search from the head was O(backlog)
    /// per answer, which made a lagging follower slow the leader's path down. (These functions work on the
    /// cold state's array in place: going through the session's `units` accessor copies the array.)
    private func nextUnanswered(_ c: SessionColdState, from cursor: Int32, leader: Bool) -> Int? {
        var i = max(Int(cursor), c.unitsHead)
        while i < c.units.count {
            if (leader ? c.units[i].leaderDoneAt : c.units[i].followerDoneAt) == 0 { return i }
            i += 1
        }
        return nil
    }

    /// After units were dropped from the end, the cursors must not point past them.
    func clampUnitCursors() {
        guard let c = cold else { return }
        c.leaderCursor = min(c.leaderCursor, Int32(c.units.count))
        c.followerCursor = min(c.followerCursor, Int32(c.units.count))
    }

    func leaderUnitDone(_ digest: UnitDigest) {
        let c = coldState
        guard let i = nextUnanswered(c, from: c.leaderCursor, leader: true) else { return }
        c.leaderCursor = Int32(i + 1)
        c.units[i].leader = digest
        c.units[i].leaderDoneAt = loop.nanoseconds
        if c.units[i].isWrite, let route {
            route.leaderWriteSeq += 1
            c.units[i].leaderSeq = route.leaderWriteSeq
        }
    }

    func followerUnitDone(_ digest: UnitDigest) {
        let c = coldState
        guard let i = nextUnanswered(c, from: c.followerCursor, leader: false) else { return }
        c.followerCursor = Int32(i + 1)
        c.units[i].follower = digest
        c.units[i].followerDoneAt = loop.nanoseconds
        if let seq = c.units[i].leaderSeq, let route {
            if seq < route.followerMaxLeaderSeq && mirrorMode == .async { writeOrderInverted(c.units[i], route) }
            route.followerMaxLeaderSeq = max(route.followerMaxLeaderSeq, seq)
        }
    }

    /// Records that a write overtook another session's on the follower (rate-limited to one record a second).
    private func writeOrderInverted(_ u: PendingUnit, _ route: RouteRuntime) {
        let now = loop.now
        guard now - route.lastWriteOrderRecord >= 1000 else {
            route.stats.divergences[.writeOrder, default: 0] += 1
            return
        }
        route.lastWriteOrderRecord = now
        server.recordDivergence(session: self, kind: .writeOrder, statement: u.unit.statements.first, leader: nil, follower: nil,
                                leaderMs: u.leaderMs, followerMs: nil,
                                detail: "a warning: another session's write, applied later on the leader, was read back from the follower first, so the two ran concurrently there; non-commutative writes to the same rows may then differ (sync mirroring orders them, cutover verify compares the tables; further occurrences within a second are only counted)")
    }

    /// Compares every unit both sides have answered, oldest first, and records what differs.
    func compareReadyUnits() {
        // Borrowed, not retained (twice per mirrored query): `cold` and `route` are set once and live as long
        // as the session, which the caller holds.
        guard let cold = cold.map(Unretained.init), let route = route.map(Unretained.init) else { return }
        cold.call { c in route.call { route in compareReadyUnits(c, route) } }
    }

    private func compareReadyUnits(_ c: SessionColdState, _ route: RouteRuntime) {
        guard !c.units.isEmpty else { return }
        while c.unitsHead < c.units.count, c.units[c.unitsHead].leaderDoneAt != 0, c.units[c.unitsHead].followerDoneAt != 0 {
            let i = c.unitsHead
            c.unitsHead += 1
            route.stats.mirrored += 1
            let leaderMs = c.units[i].leaderMs, followerMs = c.units[i].followerMs
            if let ms = leaderMs { route.stats.leaderMsTotal += ms; route.stats.leaderCount += 1 }
            if let ms = followerMs { route.stats.followerMsTotal += ms; route.stats.followerCount += 1 }
            guard let l = c.units[i].leader, let f = c.units[i].follower else { continue }
            let differences = UnitDigest.differences(leader: l, follower: f)
            for d in differences {
                let statements = c.units[i].unit.statements
                let text = d.index < statements.count ? statements[d.index] : statements.joined(separator: "; ")
                server.recordDivergence(session: self, kind: d.kind, statement: text.isEmpty ? nil : text,
                                        leader: d.leader, follower: d.follower, leaderMs: leaderMs, followerMs: followerMs,
                                        detail: "statement \(d.index + 1) of the unit")
            }
            // Reads that answered alike, with nothing carried from earlier units, cannot have kept a difference.
            if !differences.isEmpty || c.units[i].unit.mayChangeData || !c.keptWrites.isQuiet,
               let reason = c.keptWrites.compared(c.units[i].unit, leader: l, follower: f, differences: differences) {
                route.markOutOfSync("session \(id): \(reason)")
            }
        }
        if c.unitsHead == c.units.count {
            // A session that once had a long backlog does not keep its buffer.
            c.units.removeAll(keepingCapacity: c.units.capacity <= 64)
            c.unitsHead = 0
            c.leaderCursor = 0
            c.followerCursor = 0
        } else if c.unitsHead >= 256 && c.unitsHead * 2 >= c.units.count {
            // Under steady load the follower may never be fully caught up: drop the compared prefix.
            c.units.removeFirst(c.unitsHead)
            c.leaderCursor = max(0, c.leaderCursor - Int32(c.unitsHead))
            c.followerCursor = max(0, c.followerCursor - Int32(c.unitsHead))
            c.unitsHead = 0
        }
    }

    /// Async mode's bounds: too many bytes or statements waiting on the follower stop mirroring for this session.
    func checkMirrorBounds() {
        guard let follower else { return }
        let queued = follower.connection.queuedBytes + follower.queuedUntilReadyCount + (cold?.followerOutbox.count ?? 0)
        let waiting = pendingUnitCount
        let (maxBytes, maxStatements) = server.mirrorQueueLimits
        if queued > maxBytes || waiting > maxStatements {
            stopMirroring(.queueOverflow, detail: "follower queue: \(queued) bytes, \(waiting) statements (limits \(maxBytes) bytes, \(maxStatements) statements)")
        }
    }

    /// Past `follower_timeout` without an answer from the follower, the session degrades to out of sync.
    func checkFollowerTimeout(nowMs: UInt64, nowNs: UInt64) {
        if pendingUnitCount > 0 { catchUpFollower() } // an answer waiting unread in the socket is not late
        guard follower != nil else { return }
        let limit = server.config.server.followerTimeout
        guard limit > 0 else { return }
        // The clock starts when the leader has answered (a long statement is slow on both sides, not a
        // lagging follower), or when the follower went first (a COMMIT in lock-step).
        // Held with every readback answered means something is stuck (a long statement on the leader is the
        // leader's time, not the follower's); the clock restarts at each release.
        // (Bounded also with a readback still owed: a lost answer must not starve the follower for ever.)
        if let s = cold?.captures, let since = s.heldSince, Double(nowNs &- since) / 1e9 > (s.awaiting == 0 ? limit : max(60, 12 * limit)) {
            // The leader's values for a captured write never came back: its follower copy cannot go.
            return stopMirroring(.followerTimeout, detail: "a captured write's values were not read back from the leader within \(limit) s")
        }
        guard let u = units[unitsHead...].first(where: { $0.follower == nil && $0.followerSentAt != nil }),
              let sent = u.followerSentAt else { return }
        var since: UInt64
        if u.leader != nil { since = max(sent, u.leaderDoneAt) } else if lockStepIsBusy { since = sent } else { return }
        if let f = follower, !f.isReady {
            // Waiting for its turn at the login gate is not the follower's delay; its login counts from admission.
            guard let admitted = f.loginAdmittedAt else { return }
            since = max(since, admitted)
        }
        if Double(nowNs &- since) / 1e9 > limit {
            stopMirroring(.followerTimeout, detail: "no answer from the follower within \(limit) s")
        }
    }

    // MARK: sync (lock-step) dispatch

    /// Runs what the lock-step decided (`.holdClient` is handled where the leader's bytes are split).
    func runLockStep(_ actions: [LockStep.Action]) {
        var followerKeptWrapped: Bool? // set by a wrappedWriteEnded, which comes before its release
        for action in actions {
            switch action {
            case .toLeader(let bytes): leader?.send(leaderBytesInLockStep(bytes))
            case .toFollower(let bytes):
                if case .followerFirst? = lockStep.stage { followerFirstUnit(bytes) }
                let executions = cold?.captures?.lockStepFollower ?? []
                cold?.captures?.lockStepFollower = []
                if follower != nil { toFollower(bytes, capture: executions) }
            case .toLeaderInternal(let bytes):
                leader?.addInternal()
                leaderInternalKinds.append(.lockStep)
                leader?.send(bytes)
            case .toFollowerInternal(let bytes):
                guard let follower else { continue }
                follower.addInternal()
                follower.send(bytes)
            case .unitStarted(let unit, let followerSent):
                if follower != nil { registerUnit(unit, followerSent: followerSent) }
            case .followerStarted: markFollowerSent()
            case .leaderStarted: markLeaderSent()
            case .holdClient: break
            case .releaseClient(let asIdle, let commitError):
                releaseClient(asIdle: asIdle, commitError: commitError, followerKept: followerKeptWrapped)
            case .wrappedWriteEnded(let leaderKept, let followerKept, let followerCommitError):
                followerKeptWrapped = followerKept
                if let failure = followerCommitError, leaderKept {
                    server.recordDivergence(session: self, kind: .errorMismatch, statement: nil, leader: nil, follower: failure,
                                            leaderMs: nil, followerMs: nil, detail: "the implicit COMMIT of an autocommit write failed on the follower only")
                }
                if leaderKept != followerKept {
                    route?.markOutOfSync("session \(id): an autocommit write was kept on the \(leaderKept ? "leader" : "follower") only (its implicit COMMIT failed on the other side)")
                }
            }
        }
    }

    /// The follower has finished the unit too: the client gets the held ReadyForQuery. After an implicit
    /// transaction it says idle, and a failed implicit COMMIT on the leader is reported first (and recorded as a
    /// divergence when the follower committed; `followerKept` is nil when no follower took part).
    func releaseClient(asIdle: Bool, commitError: StatementOutcome?, followerKept: Bool?) {
        if asIdle, var held = heldForClient, heldStatusIndex >= 0, heldStatusIndex < held.count {
            held[heldStatusIndex] = TransactionStatus.idle.rawValue
            if let failure = commitError {
                // The error must come before the ReadyForQuery; if part of it already went out, it cannot.
                if heldStatusIndex == 5 && held[0] == BackendMessageID.readyForQuery.rawValue {
                    var w = ByteWriter()
                    ErrorFields(severity: "ERROR", code: failure.sqlState ?? "XX000", message: failure.error ?? "commit failed").encode(into: &w)
                    held = w.bytes + held
                }
                if followerKept == true {
                    server.recordDivergence(session: self, kind: .errorMismatch, statement: nil, leader: failure, follower: nil,
                                            leaderMs: nil, followerMs: nil, detail: "the implicit COMMIT of an autocommit write failed on the leader only")
                }
            }
            heldForClient = held
        }
        if asIdle { transactionStatus = .idle }
        releaseHeld()
    }

    func releaseHeld() {
        guard let held = heldForClient else { return }
        heldForClient = nil
        client.write(held)
        lastActivity = loop.now // the client waits from now, not from the leader's answer (idle timeouts)
    }

    // MARK: degrading

    /// Ends mirroring for this session: records why, marks the route out of sync, and lets the client go on.
    func stopMirroring(_ kind: DivergenceKind, detail: String) {
        guard let f = follower else { return }
        follower = nil
        if cold != nil { followerOutbox = [] }
        dropHeldForFollower()
        cold?.captures?.lockStepFollower = []
        cold?.captures?.followerWentFirst = false
        f.close() // closing rolls back whatever the follower had open
        cold?.keptWrites = KeptWriteCheck()
        restoreClientStatementsOnLeader()
        server.recordDivergence(session: self, kind: kind, statement: nil, leader: nil, follower: nil, leaderMs: nil, followerMs: nil, detail: detail)
        route?.markOutOfSync("session \(id): \(kind.rawValue): \(detail)")
        units.removeAll()
        leaderCursor = 0
        followerCursor = 0
        unitsHead = 0
        if !lockStepIsQuiet || mirrorMode == .sync {
            runLockStep(lockStep.followerGone(status: transactionStatus, now: loop.now))
        }
        reachedIdleBoundaryIfIdle()
        finishDrainingIfDone()
        // What lock-step queued went to the leader: a client paused for it is read again.
        maybeResumeClient()
    }

    // MARK: phases

    /// A connection to `side` of the session's route: an idle one from the pool that a session (as leader
    /// or as follower) left logged in the same way, else a new login through the server's follower login
    /// gate. A dual-phase client that connects per request then costs no follower login either.
    private func openFollowerLink(_ side: Side) -> BackendLink? {
        guard let route, let backend = server.config.backends[side == .legacy ? route.config.legacy : route.config.new] else { return nil }
        let packet = BackendHandshake(backend: backend).startupPacket(client: startup, database: backend.database,
                                                                      searchPath: route.config.searchPath(on: side))
        if let pooled = server.idleBackends?.take(IdleBackendPool.Key(backend: backend.name, side: side, startup: packet)) {
            pooled.adopt(by: self)
            return pooled
        }
        return openLink(to: backend, side: side, packet: packet, isFollower: true)
    }

    /// The session is done with its follower: to the idle pool when the session ended as the leader's release
    /// asks (`endedCleanForPool`: among others, the leader owes no answer, so no unit the client left behind
    /// can still be running on the follower) and every unit the follower was sent is answered and compared;
    /// else ended with Terminate (closing rolls back what it had open). A parked link that answers anything
    /// but its reset is closed as well (`BackendLink.parkedRead`).
    func releaseFollower() {
        guard let f = follower else { return }
        if endedCleanForPool, pendingUnitCount == 0, f.isReusable, server.parkIdle(f) {
            follower = nil // the pool has it; this session must not reach it again
            return
        }
        f.terminate()
    }

    /// Connects a follower for the session's phase; a session that predates the flip gets its state replayed.
    /// A standby logged in for this flip is adopted instead of a new connection.
    func startFollower(replay: Bool) {
        guard let side = sessionPhase.follower, let leader else { return }
        let link: BackendLink
        if let s = standby, s.side == side, !s.isClosed {
            standby = nil
            link = s
        } else {
            dropStandby()
            guard let fresh = openFollowerLink(side) else { return }
            link = fresh
        }
        follower = link
        // What an earlier follower left open (mirroring stopped mid-transaction) says nothing about this one.
        cold?.keptWrites = KeptWriteCheck()
        link.setDigesting(true)
        leader.setDigesting(true)
        tracker.recordUnits = true
        updateFollowerReading() // an adopted standby is logged in already
        guard replay else { return }
        let (bytes, answers) = tracker.replayMessages()
        if answers > 0 {
            link.addInternal(Int32(clamping: answers))
            link.send(bytes)
        }
        if !tracker.unreplayable.isEmpty {
            server.recordDivergence(session: self, kind: .unreplayableState, statement: nil, leader: nil, follower: nil,
                                    leaderMs: nil, followerMs: nil,
                                    detail: "the follower joined without: \(tracker.unreplayable.names.joined(separator: ", "))")
        }
    }

    // MARK: reading the follower

    /// With async mirroring nobody waits for the follower's answers, so they are read on demand — after
    /// the session sends its next batch, and from the server's follower-read timer — instead of each one
    /// waking the loop: on a shared CPU a wake-up costs more than reading and comparing the answer.
    /// Lock-step (sync), a pause (a flip waits for drained followers) and a session whose client left
    /// need the answers as they come, so their follower is polled.
    func updateFollowerReading() {
        guard let f = follower, f.isReady else { return }
        let onDemand = state == .forwarding && mirrorMode == .async && route?.pause == nil && lockStepIsQuiet
        if !onDemand { flushFollowerOutbox() }
        f.connection.readsOnDemand = onDemand
        if onDemand && !inFollowerReadList { server.readFollowerLater(self) }
    }

    /// Bytes batched for the follower past which they go at once (a COPY, a long transaction).
    static let followerOutboxLimit = 64 << 10

    /// Sends what async mirroring batched for the follower, and takes in what it has answered so far.
    func flushFollowerOutbox() {
        guard let c = cold, !c.followerOutbox.isEmpty else { return }
        guard let f = follower else { c.followerOutbox = []; return }
        f.send(c.followerOutbox)
        // A small buffer is kept for the next transaction; a large one (a COPY) is let go.
        c.followerOutbox.removeAll(keepingCapacity: c.followerOutbox.capacity <= 8 << 10)
        let now = loop.nanoseconds
        var batchStart = c.units.count
        while batchStart > c.unitsHead, c.units[batchStart - 1].followerSentAt == nil {
            batchStart -= 1
            c.units[batchStart].followerSentAt = now
        }
        // Answers to earlier batches may be waiting; if the follower owes none, a read would only find
        // nothing (a syscall per transaction): this batch's answers are read later.
        let owesEarlier = (nextUnanswered(c, from: c.followerCursor, leader: false) ?? batchStart) < batchStart
        if owesEarlier || f.internalUnits > 0 { catchUpFollower() }
        c.followerReadAt = loop.now
    }

    /// Takes in what an on-demand follower has answered so far. Returns whether anything was read.
    @discardableResult
    func catchUpFollower() -> Bool {
        guard let f = follower, f.connection.readsOnDemand else { return false }
        cold?.followerReadAt = loop.now
        return f.connection.readNow()
    }

    /// Async mode, for a client's cancel: whether both sides are at the last unit sent — every earlier one
    /// answered by each, the leader still running it, the follower sent it and not done with it, and no
    /// statement of the proxy's own (a replay) in its way. Then a cancel hits the same statement on both sides
    /// (or finds the follower idle, done with it); with an earlier unit still owed by either side it could hit
    /// different statements on the two, and with a later one queued, the next statement. Reads what the
    /// follower has answered first.
    func followerRunsLeadersLastUnit() -> Bool {
        guard follower != nil, mirrorMode == .async, lockStepIsQuiet else { return false }
        _ = catchUpFollower()
        guard let c = cold, let f = follower, f.internalUnits == 0 else { return false }
        let last = c.units.count - 1
        guard last >= c.unitsHead, c.units[last].leaderDoneAt == 0, c.units[last].followerSentAt != nil,
              c.units[last].followerDoneAt == 0 else { return false }
        return nextUnanswered(c, from: c.leaderCursor, leader: true) == last
            && nextUnanswered(c, from: c.followerCursor, leader: false) == last
    }

    /// For the follower-read timer: whether this session asked for its follower's answers within `ms`.
    func readFollowerWithin(_ ms: UInt64) -> Bool { loop.now &- (cold?.followerReadAt ?? 0) < ms }

    /// Whether the follower still owes answers or has batched bytes to get (the follower-read timer keeps
    /// at it until neither).
    var followerOwesAnswers: Bool {
        guard let f = follower else { return false }
        return pendingUnitCount > 0 || f.internalUnits > 0 || !(cold?.followerOutbox.isEmpty ?? true)
    }

    // MARK: standby followers

    /// Logs a follower in ahead of a flip that adds one, while the route still runs single-side: at the
    /// switch the session adopts it (its state replayed then), so the flip's follower logins — a forked
    /// backend and an authentication each — happen before the route pauses, not in the first transactions
    /// after it. Returns whether a login started.
    func openStandby(side: Side) -> Bool {
        guard state == .forwarding, follower == nil, cold?.standby == nil, leader?.isReady == true,
              let link = openFollowerLink(side) else { return false }
        standby = link
        return true
    }

    /// A standby whose login is still under way (the flip waits for these, up to its warm-up bound).
    var standbyLoggingIn: Bool {
        guard let s = cold?.standby else { return false }
        return !s.isReady && !s.isClosed
    }

    /// Lets an unused standby go (the flip was aborted or refused, or the session ended).
    func dropStandby() {
        guard let s = cold?.standby else { return }
        standby = nil
        s.terminate()
    }

    /// A standby's login ended or its connection went: the flip waiting for it may go on.
    func standbySettled(_ link: BackendLink, failure: String?) {
        if let failure {
            logger.warning("standby follower lost before the flip", metadata: ["backend": "\(link.backendName)", "error": "\(failure)"])
            standby = nil
            link.close()
        }
        if let route { server.checkFlipWarmUp(route) }
    }

    /// Brings the session to its route's phase and mirror mode. Called only when drained at an idle boundary.
    func applyRoutePhase() {
        guard let route, let currentLeader = leader else { return }
        let followerBefore = follower
        flushFollowerOutbox() // empty at a drained boundary; a forced re-route must not lose it either
        let target = route.phase
        if sessionPhase != target {
            let from = sessionPhase
            if target.leader != from.leader {
                guard let f = follower, f.side == target.leader else {
                    // Only a forced skip gets here (or a session that lost its follower): it cannot be carried over.
                    failClient(ProxyError.fatal("57P01", "route \"\(route.name)\" moved from \(from.rawValue) to \(target.rawValue); this session cannot follow it, reconnect"))
                    return
                }
                leader = f
                follower = nil
                if target.follower == currentLeader.side { follower = currentLeader } else { currentLeader.terminate() }
                // Both read again: the new leader's answers go to the client, the new follower's are compared.
                leaderPaused = false
                leader?.connection.startReading()
                follower?.connection.startReading()
                sessionPhase = target
            } else {
                sessionPhase = target
                if target.follower == nil, let f = follower {
                    follower = nil
                    f.terminate()
                } else if target.follower != nil && follower == nil {
                    startFollower(replay: true)
                }
            }
            logger.info("session changed phase", metadata: ["from": "\(from.rawValue)", "to": "\(target.rawValue)",
                                                            "leader": "\(leader?.backendName ?? "-")", "follower": "\(follower?.backendName ?? "-")"])
        }
        mirrorMode = route.mirror
        lockStep = LockStep() // quiet here: a drained idle boundary
        if follower != nil && (follower !== followerBefore || leader !== currentLeader) {
            prepareCapturedStatementsOnLeader(leaderChanged: leader !== currentLeader)
        } else if follower == nil && followerBefore != nil {
            restoreClientStatementsOnLeader()
        }
        leader?.setDigesting(follower != nil)
        leader?.connection.readsOnDemand = false // after a leader flip, the old follower
        tracker.recordUnits = follower != nil
        updateFollowerReading()
    }
}
