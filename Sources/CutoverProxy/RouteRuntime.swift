// The run-time state of one route: its phase and mirror mode, whether it is in sync, its sessions,
// counters, and a pause (manual, or for a flip that changes the leader) in progress.
import CutoverCore
import CutoverProtocol

final class RouteRuntime {
    let name: String
    var config: RouteConfig
    var phase: Phase
    var mirror: MirrorMode
    /// False once any session lost its follower, overflowed or timed out: the sides may differ.
    var inSync = true
    var outOfSyncReason: String?
    var sessions: [Int: ClientSession] = [:]
    var pause: RoutePause? { didSet { isPaused = pause != nil } }
    /// `pause != nil`, for the per-statement checks: a Bool is read without copying (retaining) the pause.
    private(set) var isPaused = false
    /// A flip that adds a follower, waiting for its sessions' standby followers to log in before it pauses.
    var warmUp: FlipWarmUp?
    var stats = RouteStats()
    /// Normalized statements already reported as cross-schema (reported once per route; counted always).
    var crossSchemaSeen: Set<String> = []
    /// Async write-order check: the order in which write units finished on the leader, and the latest
    /// leader position seen finishing on the follower.
    var leaderWriteSeq: UInt64 = 0
    var followerMaxLeaderSeq: UInt64 = 0
    /// When the last write_order record was written (they are rate-limited; all are counted).
    var lastWriteOrderRecord: UInt64 = 0
    /// Statements run since the route last left a dual phase: the side that is not leader never saw them.
    var unmirroredStatements = 0

    init(config: RouteConfig, phase: Phase, mirror: MirrorMode) {
        name = config.name
        self.config = config
        self.phase = phase
        self.mirror = mirror
    }

    private var crossSchemaScope: CrossSchemaScope?

    /// The cross-schema pre-check its sessions share; rebuilt when a reload changed the schemas.
    func crossSchemaScope(_ detector: CrossSchemaDetector) -> CrossSchemaScope {
        let own = config.legacySchema?.lowercased()
        if let scope = crossSchemaScope, scope.ownSchema == own, scope.detector.knownSchemas == detector.knownSchemas { return scope }
        let scope = CrossSchemaScope(detector: detector, ownSchema: own)
        crossSchemaScope = scope
        return scope
    }

    func markOutOfSync(_ reason: String) {
        guard inSync else { return }
        outOfSyncReason = reason
        inSync = false
        onPersistentChange?()
    }

    /// Called when something the state file keeps changed outside a flip (the route went out of sync,
    /// legacy started missing writes): the server persists it, so a restart does not forget it.
    var onPersistentChange: (() -> Void)?

    /// Legacy missed writes made before the proxy's last restart (restored from the state file).
    var legacyMissedWritesBeforeRestart = false
    /// A flip that pauses the route, from its start to its switch or abort; saved, so that a restart in
    /// between reports it aborted instead of forgetting it.
    var flipInProgress: PersistedState.Flip?
    /// How the last flip ended, for SHOW ROUTES (`dual-legacy → dual-new done in 12 ms`).
    var lastFlip: String?
    /// Each side's catalog as last read, for deterministic mirroring (the leader's is used), the plans
    /// made with it by statement text, and when a read was last asked for.
    var catalogs: [Side: WriteCatalog] = [:]
    var plans: [Side: [String: WritePlan]] = [:]
    var planBytes = 0
    var catalogRequestedAt: [Side: UInt64] = [:]
    var catalogLoading: Set<Side> = []
    /// Statement texts that ran as sent because they write to tables the catalog did not have: planned again
    /// once it has been read (see `ProxyServer.recheckAfterCatalog`).
    var recheck: [Side: Set<String>] = [:]
}

struct RouteStats {
    var statements = 0
    var mirrored = 0
    var divergences: [DivergenceKind: Int] = [:]
    var leaderMsTotal = 0.0
    var leaderCount = 0
    var followerMsTotal = 0.0
    var followerCount = 0
    var flips = 0
    var lastFlipStallMs = 0.0
    var maxFlipStallMs = 0.0

    /// Differences seen (warnings such as write_order are only in the per-kind counts).
    var divergenceTotal: Int { divergences.filter { !$0.key.isWarning }.values.reduce(0, +) }
}

/// A route holding new transactions back: for an operator's PAUSE, or while a flip changes the leader.
final class RoutePause {
    enum Reason { case manual, flip(from: Phase, to: Phase) }
    /// Server-wide number: a MARK IN SYNC names the pause its clean verify ran under, and is refused if
    /// that pause has ended since (writes may have run in between).
    let id: Int
    let reason: Reason
    let startedAt: UInt64
    let deadline: UInt64
    /// Called once when every session is parked (true) or the deadline passed (false).
    var onSettled: ((Bool) -> Void)?
    /// Every session has been drained at an idle boundary since the pause began (also after a PAUSE that
    /// timed out, once its holdouts finished): only then may a flip apply to all sessions at once.
    var settled = false
    /// Longest time a client waited with input held, in ms.
    var longestStallMs = 0.0

    init(id: Int, reason: Reason, startedAt: UInt64, deadline: UInt64, onSettled: ((Bool) -> Void)?) {
        self.id = id; self.reason = reason; self.startedAt = startedAt; self.deadline = deadline; self.onSettled = onSettled
    }

    var isFlip: Bool { if case .flip = reason { return true } else { return false } }
}

/// The first step of a flip that adds a follower: every session logs one in while the route still runs
/// single-side; the flip itself (pause, switch) starts when all are in, or at `deadline`.
final class FlipWarmUp {
    let deadline: UInt64
    /// Called once, when the warm-up ends.
    var onDone: (() -> Void)?

    init(deadline: UInt64, onDone: @escaping () -> Void) {
        self.deadline = deadline
        self.onDone = onDone
    }
}
