// Persisted run-time state: each route's phase, mirror mode, sync state, pause and flip in progress, and
// whether the proxy that wrote it is still running; written atomically, restored at start.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct PersistedState: Codable, Equatable, Sendable {
    public struct Route: Codable, Equatable, Sendable {
        public var phase: Phase
        public var mirror: MirrorMode
        /// False once the sides may differ (a follower lost, a queue overflow): a restart must not forget it,
        /// or a leader flip would go through without FORCE. Nil in files from before it was kept: in sync.
        public var inSync: Bool?
        public var outOfSyncReason: String?
        /// The route ran statements in phase `new`: legacy missed them. Nil in older files: true for `new`.
        public var legacyMissedWrites: Bool?
        /// An operator's PAUSE was in force: a restart must not let transactions through it.
        public var paused: Bool?
        /// A flip had started and not switched yet when this was written. The phase above is the one the
        /// route is in (the switch saves the new phase and clears this in one write), so a proxy that finds
        /// it at start knows that flip was cut short and reports it aborted.
        public var flip: Flip?

        public init(phase: Phase, mirror: MirrorMode, inSync: Bool? = nil, outOfSyncReason: String? = nil, legacyMissedWrites: Bool? = nil,
                    paused: Bool? = nil, flip: Flip? = nil) {
            self.phase = phase; self.mirror = mirror
            self.inSync = inSync; self.outOfSyncReason = outOfSyncReason; self.legacyMissedWrites = legacyMissedWrites
            self.paused = paused; self.flip = flip
        }

        enum CodingKeys: String, CodingKey {
            case phase, mirror, inSync = "in_sync", outOfSyncReason = "out_of_sync_reason", legacyMissedWrites = "legacy_missed_writes"
            case paused, flip
        }
    }

    /// A flip under way: where from, where to, and when it started (seconds since 1970).
    public struct Flip: Codable, Equatable, Sendable {
        public var from: Phase
        public var to: Phase
        public var startedAt: Double
        public init(from: Phase, to: Phase, startedAt: Double) { self.from = from; self.to = to; self.startedAt = startedAt }
        enum CodingKeys: String, CodingKey { case from, to, startedAt = "started_at" }
    }

    /// The proxy that wrote the file while serving: set from its start until its clean stop. Found at start,
    /// it means the previous proxy did not stop cleanly (killed, crashed, power lost), so a follower may
    /// have missed writes it was still owed.
    public struct Running: Codable, Equatable, Sendable {
        public var pid: Int32
        public var since: Double
        public init(pid: Int32, since: Double) { self.pid = pid; self.since = since }
    }

    public var routes: [String: Route]
    public var running: Running?
    public init(routes: [String: Route] = [:], running: Running? = nil) { self.routes = routes; self.running = running }

    /// Reads `path`; a missing file is an empty state, a corrupt one an error (never silently reset phases).
    public static func load(path: String) throws(StateFileError) -> PersistedState {
        guard FileManager.default.fileExists(atPath: path) else { return PersistedState() }
        guard let data = FileManager.default.contents(atPath: path) else { throw StateFileError(path: path, action: "read", errno: errno) }
        do { return try JSONDecoder().decode(PersistedState.self, from: data) } catch {
            throw StateFileError(path: path, action: "parse", message: "not a Cutover state file (\(Self.describe(error))); fix or move it aside")
        }
    }

    private static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let c): return c.debugDescription
        case DecodingError.keyNotFound(let k, _): return "key \(k.stringValue) missing"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        default: return "\(error)"
        }
    }

    /// Writes to a temporary file in the same directory, fsyncs it and renames it over `path`, then fsyncs
    /// the directory (else a power loss can bring the old file back).
    public func save(path: String) throws(StateFileError) {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data: Data
        do { data = try e.encode(self) } catch { throw StateFileError(path: path, action: "encode", message: "\(error)") }
        let tmp = path + ".tmp"
        // Owner only: it names routes, backends and who paused them.
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StateFileError(path: tmp, action: "create", errno: errno) }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let writeErrno = errno
        if written != data.count {
            close(fd)
            throw StateFileError(path: tmp, action: "write", errno: written < 0 ? writeErrno : ENOSPC)
        }
        if fsync(fd) != 0 { let e = errno; close(fd); throw StateFileError(path: tmp, action: "fsync", errno: e) }
        close(fd)
        if rename(tmp, path) != 0 { throw StateFileError(path: path, action: "rename \(tmp) to", errno: errno) }
        let directory = open(Self.directory(of: path), O_RDONLY | O_CLOEXEC)
        if directory >= 0 { fsync(directory); close(directory) }
    }

    static func directory(of path: String) -> String {
        let d = (path as NSString).deletingLastPathComponent
        return d.isEmpty ? "." : d
    }
}

/// A state file that could not be read, written or locked: the path and the operating system's words.
public struct StateFileError: Error, Equatable, CustomStringConvertible, Sendable {
    public var path: String
    public var action: String
    public var message: String

    public init(path: String, action: String, message: String) { self.path = path; self.action = action; self.message = message }
    public init(path: String, action: String, errno code: Int32) {
        self.init(path: path, action: action, message: String(cString: strerror(code)))
    }

    public var description: String { "cannot \(action) \(path): \(message)" }
}

/// The exclusive lock one proxy holds on its state file for as long as it runs: two proxies on one file
/// would each restore, flip and save on their own, and disagree about a route's leader. The lock is an
/// `flock` on `<state_file>.lock` (not the state file itself, which each save replaces by a rename); the
/// kernel drops it when the process ends, however it ends, so a killed proxy never leaves a stale lock.
public final class StateFileLock: @unchecked Sendable {
    public let path: String
    private var fd: Int32

    /// Takes the lock or says who holds it.
    public init(stateFile: String) throws(StateFileError) {
        path = stateFile + ".lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StateFileError(path: path, action: "open the lock file", errno: errno) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            let holder = Self.readPID(fd)
            close(fd)
            if code == EWOULDBLOCK {
                throw StateFileError(path: stateFile, action: "lock", message: "another cutover process\(holder.map { " (pid \($0))" } ?? "") "
                                     + "is serving with this state file; stop it first, or give this proxy a state_file of its own")
            }
            throw StateFileError(path: path, action: "lock", errno: code)
        }
        // The holder's pid, for the message a second proxy prints.
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    /// The pid written by the process holding the lock, if the file has one.
    public static func holder(stateFile: String) -> Int32? {
        let fd = open(stateFile + ".lock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // Held only if a non-blocking shared lock is refused.
        if flock(fd, LOCK_SH | LOCK_NB) == 0 { _ = flock(fd, LOCK_UN); return nil }
        return readPID(fd)
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 31, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Lets go of the lock (the process's end does too).
    public func release() {
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
    }

    deinit { release() }
}

extension Phase {
    public enum TransitionError: Error, Equatable, CustomStringConvertible {
        case skip(from: Phase, to: Phase)
        case same(Phase)
        public var description: String {
            switch self {
            case .skip(let a, let b): return "\(a.rawValue) → \(b.rawValue) skips a step; go one step at a time or add FORCE"
            case .same(let p): return "the route is already in phase \(p.rawValue)"
            }
        }
    }

    /// Checks a flip. One step either way is allowed; skipping needs `force`.
    public func transition(to target: Phase, force: Bool) throws(TransitionError) {
        if target == self { throw .same(self) }
        if !isAdjacent(to: target) && !force { throw .skip(from: self, to: target) }
    }
}

extension PersistedState.Route {
    /// What a saved route resumes as at start, and what to tell the operator about it. `previousRun` is the
    /// running marker the file still had: the proxy that wrote it did not stop cleanly, so a follower may
    /// have been owed writes it never got (an async queue, a sync statement between its two COMMITs), and a
    /// dual-phase route cannot be trusted to be in sync.
    public func restored(previousRun: PersistedState.Running?) -> (route: PersistedState.Route, notes: [String]) {
        var r = self
        var notes: [String] = []
        if let flip {
            notes.append("the flip from \(flip.from.rawValue) to \(flip.to.rawValue) was cut short by "
                         + (previousRun == nil ? "a restart" : "an unclean shutdown") + "; aborted: the route stays in \(phase.rawValue)")
            r.flip = nil
        }
        if let previousRun, phase.follower != nil, inSync != false {
            r.inSync = false
            r.outOfSyncReason = "unclean shutdown: the proxy (pid \(previousRun.pid)) stopped without draining its followers; "
                + "the \(phase.follower!.rawValue) side may have missed writes"
            notes.append(r.outOfSyncReason!)
        }
        if paused == true { notes.append("restored paused: new transactions wait until RESUME") }
        return (r, notes)
    }
}
