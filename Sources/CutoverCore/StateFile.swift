// Persisted run-time state: the phase and mirror mode of every route, written atomically, restored at start.
import Foundation

public struct PersistedState: Codable, Equatable, Sendable {
    public struct Route: Codable, Equatable, Sendable {
        public var phase: Phase
        public var mirror: MirrorMode
        public init(phase: Phase, mirror: MirrorMode) { self.phase = phase; self.mirror = mirror }
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
