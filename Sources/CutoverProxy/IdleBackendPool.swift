// Logged-in backend connections a session left idle, kept for the next session that would log in the same
// way (`backend_pool_size`): a client that connects per request then costs no PostgreSQL fork and login.
import CutoverCore

/// Idle backend links by login: the backend's name, the side, and the exact startup packet the proxy sent it (user,
/// database, search_path, the client's parameters), so a link is only reused for a session that would have
/// logged in identically. Most recently parked first (its backend's caches are warmest).
///
/// A parked link has no session (`BackendLink.park`): it resets its backend with `DISCARD ALL` as it is
/// parked, so an idle backend holds none of the previous session's settings, prepared statements,
/// temporary tables, LISTENs or advisory locks, and a session that takes it starts as after a fresh login.
/// It keeps reading, to close when its backend goes away; whether it is reset and still idle is checked
/// again when it is taken.
final class IdleBackendPool {
    struct Key: Hashable {
        let backend: String
        /// The side of a route the link serves (a flip that swaps leader and follower looks at it).
        let side: Side?
        let startup: [UInt8]
    }

    private struct Entry {
        let link: BackendLink
        let since: UInt64
    }

    private var entries: [Key: [Entry]] = [:]
    /// Idle links kept per key at most.
    var sizePerLogin: Int
    /// How long a link may stay parked (ms); 0: no limit.
    var idleTimeoutMs: UInt64
    private(set) var count = 0

    init(sizePerLogin: Int, idleTimeoutMs: UInt64) {
        self.sizePerLogin = sizePerLogin
        self.idleTimeoutMs = idleTimeoutMs
    }

    /// Keeps `link` for a later session; false (the caller terminates it) when that login's pool is full.
    func park(_ link: BackendLink, key: Key, now: UInt64) -> Bool {
        guard sizePerLogin > 0, entries[key, default: []].count < sizePerLogin else { return false }
        link.park()
        entries[key, default: []].append(Entry(link: link, since: now))
        count += 1
        return true
    }

    /// The most recently parked link for `key` whose backend is still there; those found gone are closed.
    func take(_ key: Key) -> BackendLink? {
        while let entry = entries[key]?.popLast() {
            count -= 1
            if entries[key]?.isEmpty == true { entries[key] = nil }
            if entry.link.isResetAndIdle { return entry.link }
            // Closed by the server, said something unasked (a FATAL before closing), or its reset is still
            // on the way (taken within microseconds of parking): a fresh login is the safe choice.
            entry.link.terminate()
        }
        return nil
    }

    /// Idle links per backend name (SHOW BACKENDS, metrics).
    func countsByBackend() -> [String: Int] {
        var counts: [String: Int] = [:]
        for (key, list) in entries { counts[key.backend, default: 0] += list.count }
        return counts
    }

    /// Terminates links parked longer than the idle timeout, and those over a lowered size; returns how many.
    @discardableResult
    func expire(now: UInt64) -> Int {
        var closed = 0
        for key in Array(entries.keys) {
            var list = entries[key]!
            let over = max(0, list.count - sizePerLogin)
            let expired = list.enumerated().filter { i, e in i < over || (idleTimeoutMs > 0 && now &- e.since >= idleTimeoutMs) }.map(\.offset)
            for i in expired.reversed() { list.remove(at: i).link.terminate() }
            closed += expired.count
            entries[key] = list.isEmpty ? nil : list
        }
        count -= closed
        return closed
    }

    /// Terminates every parked link (shutdown, or a reload that may have changed backends).
    func terminateAll() {
        for list in entries.values { for e in list { e.link.terminate() } }
        entries = [:]
        count = 0
    }
}
