// Where each backend's host name points now: the addresses last resolved, which to connect to, and when to
// look the name up again. Pure: the proxy runs the lookups (off the event loop) and passes the time in.
import CutoverNative

/// The resolved addresses of every backend, kept fresh while connections need them.
///
/// A backend whose `host` is an IP address needs no lookup. A host name is resolved when the config is
/// loaded, then again when a connection needs it and the addresses are older than `refreshMs` (0: never on
/// age alone), and soon after a connection to it fails: a failover that moved the name (a cloud database's
/// DNS switch) must not wait for the refresh interval. Lookups of one name are at most one at a time and
/// one per `retryMs`. A failed lookup keeps the addresses known before (a DNS outage does not take down
/// backends whose addresses still work). A name with several addresses is used round robin, and an address
/// that refused a connection is passed over for `failureMemoryMs` while another is left. Each choice also
/// lists the name's other addresses, for the connection to try in turn if its first one fails (as libpq
/// tries every address of a host).
public struct BackendAddresses: Sendable {
    public struct Entry: Sendable, Equatable {
        public let host: String
        public let isLiteral: Bool
        public fileprivate(set) var addresses: [String]
        /// When the addresses were last resolved (ms); nil for an IP address or a name never resolved.
        public fileprivate(set) var resolvedAt: UInt64?
        public fileprivate(set) var lookupInFlight = false
        /// Why the last lookup failed (nil after a success).
        public fileprivate(set) var lastFailure: String?
        /// When the last lookup started (ms).
        fileprivate var lastLookupAt: UInt64?
        /// A connection failed since the last lookup that changed the addresses and none has succeeded since.
        fileprivate var suspect = false
        /// Round-robin position.
        fileprivate var next = 0
        /// Addresses that refused a connection, and when (ms).
        fileprivate var failedAt: [String: UInt64] = [:]

        init(host: String) {
            self.host = host
            isLiteral = host.hasPrefix("/") || IPAddress.isLiteral(host) // a socket directory needs no lookup either
            addresses = isLiteral ? [host] : []
        }
    }

    /// What a connection should do: connect to `address` (nil: the name has no known address, say why with
    /// `failure`), and whether the caller must start a lookup of the name now (it was marked in flight).
    /// `fallbacks` are the name's other addresses, to try in this order if `address` fails: the rotation's
    /// next ones first, those that refused a connection lately last.
    public struct Choice: Equatable, Sendable {
        public var address: String?
        public var failure: String?
        public var startLookup: Bool
        public var fallbacks: [String]

        public init(address: String?, failure: String?, startLookup: Bool, fallbacks: [String] = []) {
            self.address = address
            self.failure = failure
            self.startLookup = startLookup
            self.fallbacks = fallbacks
        }
    }

    public private(set) var entries: [String: Entry] = [:]
    public var refreshMs: UInt64
    public var retryMs: UInt64
    public var failureMemoryMs: UInt64

    public init(refreshMs: UInt64, retryMs: UInt64 = 1000, failureMemoryMs: UInt64 = 10_000) {
        self.refreshMs = refreshMs
        self.retryMs = retryMs
        self.failureMemoryMs = failureMemoryMs
    }

    /// Takes the backends (name → host) of a loaded or reloaded config. A backend whose host did not change
    /// keeps its addresses; returns the names to look up now (each marked in flight).
    public mutating func configure(_ hosts: [String: String], now: UInt64) -> [String] {
        var kept: [String: Entry] = [:]
        var lookups: [String] = []
        for (name, host) in hosts {
            if let old = entries[name], old.host == host {
                kept[name] = old
                continue
            }
            var entry = Entry(host: host)
            if !entry.isLiteral {
                entry.lookupInFlight = true
                entry.lastLookupAt = now
                lookups.append(name)
            }
            kept[name] = entry
        }
        entries = kept
        return lookups.sorted()
    }

    /// The address for a new connection to `name`.
    public mutating func choose(_ name: String, now: UInt64) -> Choice {
        guard var e = entries[name] else { return Choice(address: nil, failure: "unknown backend", startLookup: false) }
        defer { entries[name] = e }
        let mayLookUp = !e.isLiteral && !e.lookupInFlight && (e.lastLookupAt.map { now &- $0 >= retryMs } ?? true)
        let stale = e.addresses.isEmpty || e.suspect || (refreshMs > 0 && now &- (e.resolvedAt ?? 0) >= refreshMs)
        let startLookup = mayLookUp && stale
        if startLookup {
            e.lookupInFlight = true
            e.lastLookupAt = now
        }
        guard !e.addresses.isEmpty else {
            return Choice(address: nil, failure: e.lastFailure ?? "not resolved yet", startLookup: startLookup)
        }
        // Round robin, passing over addresses that refused a connection lately while another is left.
        let n = e.addresses.count
        let rotation = (0..<n).map { e.addresses[(e.next + $0) % n] }
        let failedAt = e.failedAt, memory = failureMemoryMs
        let failedLately = { (address: String) in failedAt[address].map { now &- $0 < memory } ?? false }
        let order = rotation.filter { !failedLately($0) } + rotation.filter(failedLately)
        e.next = (e.addresses.firstIndex(of: order[0])! + 1) % n
        return Choice(address: order[0], failure: nil, startLookup: startLookup, fallbacks: Array(order.dropFirst()))
    }

    /// A lookup of `name` started for `host` ended with `addresses` (empty: it failed, `failure` says why).
    /// Returns the addresses it replaced when they changed (for the log), nil otherwise. A result for a host
    /// the backend no longer has (a reload changed it meanwhile) is ignored.
    @discardableResult
    public mutating func lookupFinished(_ name: String, host: String, addresses: [String], failure: String?, now: UInt64) -> [String]? {
        guard var e = entries[name], e.host == host else { return nil }
        defer { entries[name] = e }
        e.lookupInFlight = false
        guard !addresses.isEmpty else {
            e.lastFailure = failure ?? "no addresses"
            return nil
        }
        e.lastFailure = nil
        e.resolvedAt = now
        guard addresses != e.addresses else { return nil }
        let previous = e.addresses
        e.addresses = addresses
        e.next = 0
        e.suspect = false
        e.failedAt = e.failedAt.filter { addresses.contains($0.key) }
        return previous
    }

    /// A connection to `address` of `name` failed (refused, unreachable, timed out): that address is passed
    /// over for a while, and the name is looked up again at its next use (at most once per `retryMs`).
    public mutating func connectFailed(_ name: String, address: String, now: UInt64) {
        guard var e = entries[name] else { return }
        e.failedAt[address] = now
        if !e.isLiteral { e.suspect = true }
        entries[name] = e
    }

    /// A connection to `address` of `name` succeeded: the address is good again.
    public mutating func connected(_ name: String, address: String) {
        guard let e = entries[name], e.suspect || e.failedAt[address] != nil else { return }
        entries[name]?.failedAt[address] = nil
        entries[name]?.suspect = false
    }
}
