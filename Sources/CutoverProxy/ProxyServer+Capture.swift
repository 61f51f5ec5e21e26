// What deterministic mirroring needs from the server: each route's leader catalog (read on libuv's thread
// pool, never on the loop), the write plans made with it (cached by text), and sequences carried to the
// new leader when a flip changes it.
import CutoverCore
import CutoverRuntime

extension ProxyServer {
    /// The schema a side of a route keeps its tables in (nil: the one its backend user lands in).
    func schema(of r: RouteRuntime, _ side: Side) -> String? {
        side == .legacy ? r.config.legacySchema : r.config.newSchema
    }

    /// How mirroring treats `text` on route `r` in the session's phase: cached per leader side and text.
    func writePlan(_ r: RouteRuntime, _ text: String, leader side: Side? = nil) -> WritePlan {
        let side = side ?? r.phase.leader
        // Most statements cannot write: a SELECT pays a keyword test. A multi-statement text is looked at whole.
        var t = text
        let mayWrite = t.withUTF8 { utf8 -> Bool in
            let raw = UnsafeRawBufferPointer(utf8)
            let keyword = SQLBytes.leadingKeyword(raw)
            return SQLBytes.isWrite(raw, keyword: keyword) || SQLBytes.mayHoldSeveralStatements(raw)
        }
        guard mayWrite else { return .asSent }
        if let hit = r.plans[side]?[text] { return hit }
        let plan: WritePlan
        if text.utf8.count > Self.largestAnalyzedStatement {
            plan = .nondeterministic("a statement of \(text.utf8.count) bytes is not analyzed (more than \(Self.largestAnalyzedStatement)); its values may differ per side")
        } else {
            plan = DeterministicWrite.plan(text, catalog: r.catalogs[side])
            if r.catalogs[side] == nil { refreshCatalog(r, side: side) } // read it for the next statements
        }
        if case .needsCatalog = plan {
            // Run as sent now; planned again once the catalog has been read (`recheckAfterCatalog`).
            if r.recheck[side, default: []].count < 1024 { r.recheck[side, default: []].insert(text) } else {
                // Too many unknown texts at once to check each later: not silently.
                r.markOutOfSync("nondeterministic: more than 1 024 statements wrote to tables the proxy had no catalog for")
            }
            refreshCatalog(r, side: side, force: true)
            return plan // not cached: the next one asks again until the catalog is in
        }
        // Bounded: by count and by the bytes of text kept.
        if r.planBytes > Self.planCacheBytes || (r.plans[side]?.count ?? 0) >= 4096 { r.plans = [:]; r.planBytes = 0 }
        r.plans[side, default: [:]][text] = plan
        r.planBytes += text.utf8.count
        return plan
    }

    static let largestAnalyzedStatement = 4 << 20
    static let planCacheBytes = 16 << 20

    /// Reads the catalog of `side` of route `r` off the loop; `done` gets the failure, if any. Plans made
    /// with the old catalog are dropped when the new one is in.
    func refreshCatalog(_ r: RouteRuntime, side: Side, force: Bool = false, done: ((String?) -> Void)? = nil) {
        guard let backend = config.backends[side == .legacy ? r.config.legacy : r.config.new] else { done?("no backend"); return }
        if done == nil {
            // Unasked refreshes (DDL) at most once a second per side; one asked for a recheck whenever none is under way.
            if force { guard !r.catalogLoading.contains(side) else { return } }
            else { guard loop.now - (r.catalogRequestedAt[side] ?? 0) >= 1000 || r.catalogRequestedAt[side] == nil else { return } }
        }
        r.catalogRequestedAt[side] = loop.now
        r.catalogLoading.insert(side)
        let schema = schema(of: r, side)
        BackgroundWork.start(loop: loop, { BackendSession.readCatalog(backend, schema: schema) }) { [weak self, weak r] result in
            guard let self, let r else { return }
            r.catalogLoading.remove(side)
            switch result {
            case .success(let catalog):
                r.catalogs[side] = catalog
                r.plans[side] = [:]
                self.logger.info("catalog read", metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "schema": "\(catalog.schema)",
                                                            "tables": "\(catalog.tables.count)"])
                self.recheckAfterCatalog(r, side: side, failure: nil)
                done?(nil)
            case .failure(let e):
                self.logger.warning("cannot read the catalog", metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "error": "\(e)"])
                self.recheckAfterCatalog(r, side: side, failure: e.description)
                done?(e.description)
            }
        }
    }

    /// Statements that ran as sent because their table was not in the catalog, planned again with the new
    /// one: one that needed a capture was mirrored without it, so the route is marked out of sync. A table
    /// still missing (a temporary table, a view, a table on another schema of the search_path) is not ours
    /// to judge. If the catalog could not be read at all, every such statement marks the route.
    func recheckAfterCatalog(_ r: RouteRuntime, side: Side, failure: String?) {
        guard let texts = r.recheck.removeValue(forKey: side), !texts.isEmpty else { return }
        for text in texts {
            let reason: String
            if let failure {
                reason = "a write to a table the proxy had no catalog for ran as sent, and the catalog could not be read: \(failure)"
            } else {
                switch DeterministicWrite.plan(text, catalog: r.catalogs[side]) { // not writePlan: that would queue it again
                case .asSent: continue
                case .needsCatalog:
                    // Still not a table of the route's schema after a fresh read (a temporary table, a view):
                    // run as sent from now on, without a catalog read each time (until the next read).
                    r.plans[side, default: [:]][text] = .asSent
                    continue
                case .captured: reason = "a write to a table created after the proxy read the catalog stored values that differ per side (its defaults, or calls), uncaptured"
                case .nondeterministic(let why): reason = why
                }
            }
            recordRouteDivergence(r, kind: .nondeterministic, detail: reason + " (statement: \(analyzer.analyze(text).normalized ?? "?"))")
            r.markOutOfSync("nondeterministic: \(reason)")
            break // the route is marked; one record says why
        }
    }

    /// At start, before serving: the catalog of each dual-phase route's leader, read here and now (a proxy
    /// that starts mirroring without it would mark the route out of sync at the first write).
    func readCatalogsAtStart() {
        for r in routes.values where r.phase.follower != nil {
            let side = r.phase.leader
            guard let backend = config.backends[side == .legacy ? r.config.legacy : r.config.new] else { continue }
            switch BackendSession.readCatalog(backend, schema: schema(of: r, side)) {
            case .success(let c):
                r.catalogs[side] = c
                logger.info("catalog read", metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "schema": "\(c.schema)", "tables": "\(c.tables.count)"])
            case .failure(let e):
                logger.warning("cannot read the catalog; writes will be marked out of sync until it is read",
                               metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "error": "\(e)"])
            }
        }
    }

    /// A flip that changes the leader: the old leader's sequences are carried to the new one (captured
    /// writes gave the follower explicit ids, so its own sequences never moved).
    func carrySequences(_ r: RouteRuntime, from: Side, to: Side, done: @escaping (String?) -> Void) {
        guard let old = config.backends[from == .legacy ? r.config.legacy : r.config.new],
              let new = config.backends[to == .legacy ? r.config.legacy : r.config.new] else { return done("no backend") }
        let (oldSchema, newSchema) = (schema(of: r, from), schema(of: r, to))
        BackgroundWork.start(loop: loop, { BackendSession.carrySequences(from: old, schema: oldSchema, to: new, schema: newSchema) }) { [weak self] result in
            switch result {
            case .success(let n):
                self?.logger.notice("sequences carried to the new leader", metadata: ["route": "\(r.name)", "to": "\(to.rawValue)", "sequences": "\(n)"])
                done(nil)
            case .failure(let e):
                done(e.description)
            }
        }
    }
}
