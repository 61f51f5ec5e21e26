// What makes two backend logins interchangeable, for the idle backend pool: the backend, the side, and the
// exact startup packet the proxy sent.

/// The idle pool's key. The startup packet holds the client's parameters (application_name, options, …),
/// so a link is reused only for a session that would have logged in identically.
public struct PooledLoginKey: Hashable, Sendable {
    public let backend: String
    /// The side of a route the link serves (a flip that swaps leader and follower looks at it).
    public let side: Side?
    public let startup: [UInt8]
    /// The startup packet hashed once, word at a time: Array's own hashing and comparison go through a
    /// protocol witness per byte (callgrind: ~7 000 instructions per session for the pool's lookups).
    private let digest: UInt64

    public init(backend: String, side: Side?, startup: [UInt8]) {
        self.backend = backend
        self.side = side
        self.startup = startup
        digest = startup.withUnsafeBytes { DigestBuilder.hash($0) }
    }

    public func hash(into h: inout Hasher) {
        h.combine(digest)
        h.combine(backend)
        h.combine(side)
    }

    public static func == (a: PooledLoginKey, b: PooledLoginKey) -> Bool {
        // The digest first: the byte comparison runs only for what is almost surely a match.
        a.digest == b.digest && a.backend == b.backend && a.side == b.side && a.startup == b.startup
    }
}
