// Persisted run-time state: each route's phase, mirror mode and sync state, written atomically, restored at start.
import Foundation

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

        public init(phase: Phase, mirror: MirrorMode, inSync: Bool? = nil, outOfSyncReason: String? = nil, legacyMissedWrites: Bool? = nil) {
            self.phase = phase; self.mirror = mirror
            self.inSync = inSync; self.outOfSyncReason = outOfSyncReason; self.legacyMissedWrites = legacyMissedWrites
        }

        enum CodingKeys: String, CodingKey {
            case phase, mirror, inSync = "in_sync", outOfSyncReason = "out_of_sync_reason", legacyMissedWrites = "legacy_missed_writes"
        }
    }
    public var routes: [String: Route]
    public init(routes: [String: Route] = [:]) { self.routes = routes }

    /// Reads `path`; a missing file is an empty state, a corrupt one an error (never silently reset phases).
    public static func load(path: String) throws -> PersistedState {
        guard FileManager.default.fileExists(atPath: path) else { return PersistedState() }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try JSONDecoder().decode(PersistedState.self, from: data)
    }

    /// Writes to a temporary file in the same directory, fsyncs it and renames it over `path`.
    public func save(path: String) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = try e.encode(self)
        let tmp = path + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: tmp])
        }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: tmp))
        try h.synchronize()
        try h.close()
        if rename(tmp, path) != 0 { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        // The rename itself is durable only once the directory is: else a power loss can bring the old file back.
        let directory = open((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent, O_RDONLY)
        if directory >= 0 { fsync(directory); close(directory) }
    }
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
