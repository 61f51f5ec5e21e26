// What a session needs only while mirroring, paused or logging in, kept out of line: an idle session in a
// single-side phase pays one pointer for it instead of about 150 bytes.
import CutoverCore

/// Allocated the first time any of it is written; the session's accessors below read an absent box as
/// the empty state, so the code using these fields is the same as if they were stored in the session.
final class SessionColdState {
    /// Units awaiting comparison (dual phases), oldest first.
    var units: [PendingUnit] = []
    var unitsHead = 0
    /// Reused per client chunk: units that completed in it and where they end.
    var chunkUnits: [(endOffset: Int, unit: WorkUnit)] = []
    /// Leader bytes held from the client until the follower has finished the same unit (sync mode).
    var heldForClient: [UInt8]?
    /// Where the held ReadyForQuery's status byte is in `heldForClient` (its start may have gone out
    /// already when the message straddled two reads).
    var heldStatusIndex = 5
    /// Client input held while the route is paused at this session's idle boundary.
    var parkedBytes: [UInt8] = []
    var parkedSince: UInt64?
    /// Client bytes pipelined before the backend login finished.
    var pendingClientBytes: [UInt8] = []
    /// SASLFinal, owed to the client with AuthenticationOk once the backend is ready.
    var loginPrefix: [UInt8] = []
    /// Admin console: answers in the order of their commands, nil while still to come (SET PHASE, PAUSE);
    /// `adminAnswersBase` numbers the first.
    var adminAnswers: [[UInt8]?] = []
    var adminAnswersBase = 0
    /// Which of this session's differing answers were kept by one side's data (marks the route out of sync).
    var keptWrites = KeptWriteCheck()
    /// Sync mirroring: the unit in lock-step and the client bytes queued behind it.
    var lockStep = LockStep()
    /// application_name as the client last SET it (the leader reports it with ParameterStatus).
    var applicationName: String?
    /// Where the next leader / follower answer goes in `units` (each side answers in order).
    var leaderCursor: Int32 = 0
    var followerCursor: Int32 = 0
    /// Async mirroring: client bytes for the follower, sent together when the leader ends the transaction
    /// (or at `followerOutboxLimit`, or from the follower-read timer): one wake-up of the follower's
    /// backend per transaction instead of one per statement.
    var followerOutbox: [UInt8] = []
    /// When the follower's answers were last asked for (loop ms): the follower-read timer skips sessions
    /// that did so within its interval (an active session reads at each batch anyway).
    var followerReadAt: UInt64 = 0
    /// Deterministic mirroring: writes whose per-side values the leader computes and the follower is given
    /// (see ClientSession+Capture). Allocated at the first such write.
    var captures: CaptureState?
    /// What each unit of the proxy's own on the leader is, in the order sent: its answers say which ended.
    var leaderInternalKinds: [LeaderInternalKind] = []
    /// A follower logged in ahead of a flip that adds one (see `openStandby`), adopted when the flip switches.
    var standby: BackendLink? { willSet { BackendLink.retire(standby, replacedBy: newValue) } }

    /// What an absent box reads as.
    static let quietLockStep = LockStep()
}

extension ClientSession {
    var coldState: SessionColdState {
        if let cold { return cold }
        let c = SessionColdState()
        cold = c
        return c
    }

    var units: [PendingUnit] {
        get { cold?.units ?? [] }
        _modify { yield &coldState.units }
    }
    var unitsHead: Int {
        get { cold?.unitsHead ?? 0 }
        _modify { yield &coldState.unitsHead }
    }
    var chunkUnits: [(endOffset: Int, unit: WorkUnit)] {
        get { cold?.chunkUnits ?? [] }
        _modify { yield &coldState.chunkUnits }
    }
    var heldForClient: [UInt8]? {
        get { cold?.heldForClient }
        _modify { yield &coldState.heldForClient }
    }
    var heldStatusIndex: Int {
        get { cold?.heldStatusIndex ?? 5 }
        _modify { yield &coldState.heldStatusIndex }
    }
    var parkedBytes: [UInt8] {
        get { cold?.parkedBytes ?? [] }
        _modify { yield &coldState.parkedBytes }
    }
    var parkedSince: UInt64? {
        get { cold?.parkedSince }
        _modify { yield &coldState.parkedSince }
    }
    var pendingClientBytes: [UInt8] {
        get { cold?.pendingClientBytes ?? [] }
        _modify { yield &coldState.pendingClientBytes }
    }
    var loginPrefix: [UInt8] {
        get { cold?.loginPrefix ?? [] }
        _modify { yield &coldState.loginPrefix }
    }
    var lockStep: LockStep {
        get { cold?.lockStep ?? SessionColdState.quietLockStep }
        _modify { yield &coldState.lockStep }
    }
    var leaderCursor: Int32 {
        get { cold?.leaderCursor ?? 0 }
        _modify { yield &coldState.leaderCursor }
    }
    var followerCursor: Int32 {
        get { cold?.followerCursor ?? 0 }
        _modify { yield &coldState.followerCursor }
    }

    var followerOutbox: [UInt8] {
        get { cold?.followerOutbox ?? [] }
        _modify { yield &coldState.followerOutbox }
    }
    var standby: BackendLink? {
        get { cold?.standby }
        _modify { yield &coldState.standby }
    }
    var leaderInternalKinds: [LeaderInternalKind] {
        get { cold?.leaderInternalKinds ?? [] }
        _modify { yield &coldState.leaderInternalKinds }
    }

    /// Hot-path checks that must not copy a LockStep out of the box.
    var lockStepIsQuiet: Bool { cold?.lockStep.isQuiet ?? true }
    var lockStepIsBusy: Bool { cold?.lockStep.isBusy ?? false }
}
