// Integration: what a restart must not forget — a route out of sync, legacy's missed writes, a route left out of one config.
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct StateFileTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func aRestartKeepsARouteOutOfSyncLegacysMissedWritesAndTheStateOfARouteLeftOutOfTheConfig() throws {
        let route = f.dualLegacyRouteTOML("keepsync")
        let (first, port, path) = try f.ownProxy("state-restart", server: "state_file = \"state-restart.json\"",
                                                 rest: ProxyFixture.adminTOML + "\n" + route)
        var p = first
        defer { stopBackgroundProcess(p) }
        func restart() throws {
            stopBackgroundProcess(p)
            p = try ProxyFixture.startProxy(configPath: path, logPath: "\(f.directory)/state-restart.log", port: port)
        }
        func admin() throws -> PQConnection {
            try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        }
        func row() throws -> [String?] { try admin().query("SHOW ROUTES").first { $0[0] == "keepsync" } ?? [] }
        func sqlState(_ command: String) -> String? {
            do { try admin().query(command); return nil } catch let e as PQError { return e.sqlState } catch { return "?" }
        }

        // The follower's backend is ended behind the proxy's back: the route goes out of sync.
        let app = "state_restart_\(getpid())"
        let c = try PQConnection(f.conninfo(port, database: "keepsync", extra: "application_name=\(app)"))
        #expect(try c.scalar("SELECT 1") == "1")
        // (Polled: the follower logs in alongside the leader and may not be there yet when SELECT 1 is answered.)
        var deadline = Date().addingTimeInterval(5)
        while try f.recruitmentNew().scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '\(app)'") == "0",
              Date() < deadline { usleep(50_000) }
        deadline = Date().addingTimeInterval(5)
        while try row()[6] != "no" && Date() < deadline { _ = try? c.scalar("SELECT 1"); usleep(100_000) }
        #expect(try row()[6] == "no")
        try restart()
        let restored = try row()
        #expect(restored[1] == "dual-legacy" && restored[6] == "no", "still out of sync after the restart: \(restored)")
        #expect(sqlState("SET PHASE keepsync TO dual-new") == "55000", "a leader flip still needs FORCE")

        // In `new`, legacy misses every write; after a restart, going back to a dual phase still says so.
        #expect(sqlState("SET PHASE keepsync TO new FORCE") == nil)
        #expect(try PQConnection(f.conninfo(port, database: "keepsync")).scalar("SELECT 2") == "2")
        usleep(200_000)
        try restart()
        #expect(sqlState("SET PHASE keepsync TO dual-new") == nil)
        let back = try row()
        #expect(back[1] == "dual-new" && back[6] == "no", "legacy missed writes before the restart: \(back)")

        // A config without the route for one start: its saved phase survives, and comes back with the route.
        let full = try String(contentsOfFile: path, encoding: .utf8)
        let routeTable = full.range(of: "[routes.keepsync]")!
        try String(full[..<routeTable.lowerBound]).write(toFile: path, atomically: true, encoding: .utf8)
        try restart()
        #expect(try row().isEmpty)
        // Changes to another route save the file while this one is absent.
        #expect(sqlState("SET MIRROR onboarding TO sync") == nil && sqlState("SET MIRROR onboarding TO async") == nil)
        try full.write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        deadline = Date().addingTimeInterval(3)
        while try row().isEmpty && Date() < deadline { usleep(100_000) }
        #expect(try row()[1] == "dual-new", "restored from the state file, not the config's dual-legacy")
    }
}
