// Logged-in backend connections a session left idle, kept for the next session that would log in the same
// way (`backend_pool_size`): a client that connects per request then costs no PostgreSQL fork and login.
import CutoverCore

/// Idle backend links by login: the backend's name, the side, and the exact startup packet the proxy sent it
/// (user, database, search_path, the client's parameters), so a link is only reused for a session that would
/// have logged in identically. Most recently parked first (its backend's caches are warmest).
///
/// A parked link has no session (`BackendLink.park`): it resets its backend with `DISCARD ALL` as it is
/// parked, so an idle backend holds none of the previous session's settings, prepared statements,
/// temporary tables, LISTENs or advisory locks, and a session that takes it starts as after a fresh login.
/// It keeps reading, to close when its backend goes away; whether it is reset and still idle is checked
/// again when it is taken.
///
/// Bounds: `sizePerLogin` links per key, and `maxTotal` in all (the key holds client-chosen parameters such
/// as application_name, so without a total a client varying them could fill PostgreSQL's max_connections
/// with idle backends); past the total the oldest link anywhere is ended.
final class IdleBackendPool {
    typealias Key = PooledLoginKey

    private struct Entry {
        let link: BackendLink
        let since: UInt64
    }

    private var entries: [Key: [Entry]] = [:]
    var sizePerLogin: Int
    var maxTotal: Int
    /// How long a link may stay parked (ms); 0: no limit.
    var idleTimeoutMs: UInt64
    /// How long after its login a link may still be kept (ms; `backend_lifetime`); 0: no limit.
    var lifetimeMs: UInt64 = 0
    /// Links logged in under an older generation are not taken back (a reload changed the backends).
    private(set) var generation = 1
    private(set) var count = 0

    init(sizePerLogin: Int, maxTotal: Int, idleTimeoutMs: UInt64) {
        self.sizePerLogin = sizePerLogin
        self.maxTotal = maxTotal
        self.idleTimeoutMs = idleTimeoutMs
    }

    /// Keeps `link` for a later session; false (the caller terminates it) when it was logged in under an
    /// older generation or that login's share is full of live links.
    func park(_ link: BackendLink, key: Key, now: UInt64) -> Bool {
        guard sizePerLogin > 0, maxTotal > 0, link.poolGeneration == generation, !isPastLifetime(link, now: now) else { return false }
        dropClosed(key)
        guard entries[key, default: []].count < sizePerLogin else { return false }
        if count >= maxTotal { evictOldest() }
        link.park()
        entries[key, default: []].append(Entry(link: link, since: now))
        count += 1
        return true
    }

    /// The most recently parked link for `key` that is reset and whose backend is still there. Links found
    /// closed or gone are ended; one still waiting for its reset's answer stays parked for a later session.
    func take(_ key: Key) -> BackendLink? {
        guard var list = entries[key] else { return nil }
        var found: BackendLink?
        var i = list.count - 1
        while i >= 0 && found == nil {
            let link = list[i].link
            if link.isResetAndIdle {
                found = link
                list.remove(at: i)
            } else if !link.isResetting {
                link.terminate() // closed by the server, or it said something unasked (a FATAL before closing)
                list.remove(at: i)
            }
            i -= 1
        }
        count -= (entries[key]!.count - list.count)
        entries[key] = list.isEmpty ? nil : list
        return found
    }

    /// Idle links per backend name (SHOW BACKENDS, metrics).
    func countsByBackend() -> [String: Int] {
        var counts: [String: Int] = [:]
        for (key, list) in entries { counts[key.backend, default: 0] += list.count }
        return counts
    }

    /// Ends links parked longer than the idle timeout, closed ones, and those over a lowered size or total.
    func expire(now: UInt64) {
        for key in Array(entries.keys) {
            dropClosed(key)
            guard var list = entries[key] else { continue }
            let over = max(0, list.count - sizePerLogin)
            let expired = list.indices.filter { i in
                i < over || (idleTimeoutMs > 0 && now &- list[i].since >= idleTimeoutMs) || isPastLifetime(list[i].link, now: now)
            }
            for i in expired.reversed() { list.remove(at: i).link.terminate() }
            count -= expired.count
            entries[key] = list.isEmpty ? nil : list
        }
        while count > maxTotal { evictOldest() }
    }

    /// Ends every parked link, and starts a new generation: links of running sessions, logged in under the
    /// settings before a reload, are not taken in when those sessions end.
    func terminateAll() {
        for list in entries.values { for e in list { e.link.terminate() } }
        entries = [:]
        count = 0
        generation += 1
    }

    /// Logged in longer ago than `backend_lifetime`: ended rather than kept, so backends are renewed over time
    /// (their memory, and where a host name now points).
    private func isPastLifetime(_ link: BackendLink, now: UInt64) -> Bool {
        lifetimeMs > 0 && now &- link.loggedInAt >= lifetimeMs
    }

    /// Forgets links of `key` that closed while parked (the backend went away).
    private func dropClosed(_ key: Key) {
        guard let list = entries[key] else { return }
        let live = list.filter { !$0.link.isClosed }
        guard live.count != list.count else { return }
        count -= list.count - live.count
        entries[key] = live.isEmpty ? nil : live
    }

    /// Ends the link parked longest, whatever its login.
    private func evictOldest() {
        guard let (key, _) = entries.min(by: { ($0.value.first?.since ?? .max) < ($1.value.first?.since ?? .max) }),
              var list = entries[key], !list.isEmpty else { return }
        list.removeFirst().link.terminate()
        count -= 1
        entries[key] = list.isEmpty ? nil : list
    }
}
