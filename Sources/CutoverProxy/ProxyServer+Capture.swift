// What deterministic mirroring needs from the server: each route's leader catalog (read on libuv's thread
// pool, never on the loop), the write plans made with it (cached by text), and sequences carried to the
// new leader when a flip changes it.
import CutoverCore
import CutoverRuntime

extension ProxyServer {
    /// The schema a side of a route keeps its tables in (nil: the one its backend user lands in).
    func schema(of r: RouteRuntime, _ side: Side) -> String? {
        side == .legacy ? r.config.legacySchema : nil
    }

    /// How mirroring treats `text` on route `r` in the session's phase: cached per leader side and text.
    func writePlan(_ r: RouteRuntime, _ text: String, leader side: Side? = nil) -> WritePlan {
        let side = side ?? r.phase.leader
        // Most statements cannot write: a SELECT pays a keyword test. A multi-statement text is looked at whole.
        var t = text
        let mayWrite = t.withUTF8 { utf8 -> Bool in
            let raw = UnsafeRawBufferPointer(utf8)
            let keyword = SQLBytes.leadingKeyword(raw)
            return SQLBytes.isWrite(raw, keyword: keyword) || SQLBytes.containsByte(raw, 0x3B)
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
    func refreshCatalog(_ r: RouteRuntime, side: Side, done: ((String?) -> Void)? = nil) {
        guard let backend = config.backends[side == .legacy ? r.config.legacy : r.config.new] else { done?("no backend"); return }
        if done == nil {
            // Unasked refreshes (a miss, DDL) at most once a second per side.
            guard loop.now - (r.catalogRequestedAt[side] ?? 0) >= 1000 || r.catalogRequestedAt[side] == nil else { return }
        }
        r.catalogRequestedAt[side] = loop.now
        let schema = schema(of: r, side)
        BackgroundWork.start(loop: loop, { BackendSession.readCatalog(backend, schema: schema) }) { [weak self, weak r] result in
            guard let self, let r else { return }
            switch result {
            case .success(let catalog):
                r.catalogs[side] = catalog
                r.plans[side] = [:]
                self.logger.info("catalog read", metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "schema": "\(catalog.schema)",
                                                            "tables": "\(catalog.tables.count)"])
                done?(nil)
            case .failure(let e):
                self.logger.warning("cannot read the catalog", metadata: ["route": "\(r.name)", "side": "\(side.rawValue)", "error": "\(e)"])
                done?(e.description)
            }
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
