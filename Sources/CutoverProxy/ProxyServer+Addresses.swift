// Backend host names: resolved before the proxy serves, then looked up again in the background (libuv's
// thread pool) when they are stale or a connection to them failed. No connection ever waits for DNS.
import CutoverCore
import CutoverRuntime

extension ProxyServer {
    /// Resolves the config's host names before any client is accepted: every distinct name at once on
    /// libuv's thread pool (4 threads), the loop turned here until all have answered. A name server that does
    /// not answer then delays the start by one resolver timeout per 4 distinct names, not by one per backend.
    func resolveAtStart() {
        addressBook.refreshMs = UInt64(config.server.dnsRefresh * 1000)
        var namesByHost: [String: [String]] = [:]
        for name in addressBook.configure(config.backends.mapValues(\.host), now: loop.now) {
            if let host = config.backends[name]?.host { namesByHost[host, default: []].append(name) }
        }
        var unanswered = namesByHost.count
        for (host, names) in namesByHost.sorted(by: { $0.key < $1.key }) {
            HostLookup.start(loop: loop, host: host) { [unowned self] addresses, failure in
                unanswered -= 1
                for name in names { lookupFinished(name, host: host, addresses: addresses, failure: failure) }
            }
        }
        // Nothing else is on the loop yet (no listener, timer or signal): only the lookups' completions run.
        while unanswered > 0 { loop.runOnce(wait: true) }
    }

    /// A reload: hosts that changed (or are new) are looked up in the background; the others keep their addresses.
    func reconfigureAddresses(_ newConfig: CutoverConfig) {
        addressBook.refreshMs = UInt64(newConfig.server.dnsRefresh * 1000)
        for name in addressBook.configure(newConfig.backends.mapValues(\.host), now: loop.now) { startLookup(name) }
    }

    /// Where a new connection to `backend` goes (its addresses in the order to try them), or why it cannot;
    /// starts a background lookup when one is due (the connection meanwhile uses the addresses known now).
    func address(of backend: BackendConfig) -> (addresses: [String], failure: String?) {
        let choice = addressBook.choose(backend.name, now: loop.now)
        if choice.startLookup { startLookup(backend.name) }
        return (choice.address.map { [$0] + choice.fallbacks } ?? [], choice.failure)
    }

    /// A connection's TCP connect ended: a failure passes that address over for a while and has the name
    /// looked up again soon (a failover may have moved it).
    func backendConnectOutcome(_ name: String, address: String, succeeded: Bool) {
        if succeeded { addressBook.connected(name, address: address) } else { addressBook.connectFailed(name, address: address, now: loop.now) }
    }

    private func startLookup(_ name: String) {
        guard let host = config.backends[name]?.host else { return }
        lookups[name]?.cancel() // a reload changed the host while the previous lookup ran
        lookups[name] = HostLookup.start(loop: loop, host: host) { [weak self] addresses, failure in
            guard let self else { return }
            if self.lookups[name]?.host == host { self.lookups[name] = nil }
            self.lookupFinished(name, host: host, addresses: addresses, failure: failure)
        }
    }

    private func lookupFinished(_ name: String, host: String, addresses: [String], failure: String?) {
        let known = addressBook.entries[name]?.addresses ?? []
        if let previous = addressBook.lookupFinished(name, host: host, addresses: addresses, failure: failure, now: loop.now) {
            logger.info("backend host resolved", metadata: ["backend": "\(name)", "host": "\(host)",
                                                            "addresses": "\(addresses.joined(separator: ", "))",
                                                            "previous": "\(previous.joined(separator: ", "))"])
        } else if addresses.isEmpty, failure != "cancelled" {
            logger.warning("backend host lookup failed", metadata: [
                "backend": "\(name)", "host": "\(host)", "error": "\(failure ?? "no addresses")",
                "using": "\(known.isEmpty ? "nothing: connections to it fail until it resolves" : known.joined(separator: ", "))"])
        }
    }

    /// At shutdown: lookups not started yet are dropped (one already running finishes on its own).
    func cancelLookups() {
        for lookup in lookups.values { lookup.cancel() }
    }
}
