// A proxy of a test's own on one dual-legacy route with a state file, and what its tests ask of it.
import Foundation
import Glibc
import Testing

/// A proxy of the test's own with a state file and route `name` in dual-legacy (recruitment schema on
/// legacy leads, the recruitment database on the new cluster follows), and a table `<name>_items` on both sides.
final class RouteProxy {
    let f: ProxyFixture
    let name: String
    var process: Process
    let port: Int
    let path: String
    let log: String

    init(_ f: ProxyFixture, _ name: String, server: String = "", route extra: String = "") throws {
        self.f = f
        self.name = name
        for c in [try f.recruitmentLegacy(), try f.recruitmentNew()] {
            try c.query("DROP TABLE IF EXISTS \(name)_items")
            try c.query("CREATE TABLE \(name)_items (id int PRIMARY KEY, note text)")
        }
        try? FileManager.default.removeItem(atPath: "\(f.directory)/\(name).state")
        (process, port, path) = try f.ownProxy(name, server: "state_file = \"\(f.directory)/\(name).state\"\n\(server)",
                                               rest: ProxyFixture.adminTOML + "\n" + f.dualLegacyRouteTOML(name) + "\n" + extra)
        log = "\(f.directory)/\(name).log"
    }

    func client(_ extra: String = "") throws -> PQConnection { try PQConnection(f.conninfo(port, database: name, extra: extra)) }
    func admin() throws -> PQConnection {
        try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
    }
    /// SHOW ROUTES' row of the route, by column name.
    func route() throws -> [String: String] {
        let c = try admin()
        let rows = try c.query("SHOW ROUTES")
        let names = ["route", "phase", "mirror", "leader", "follower", "sessions", "in_sync", "divergences", "paused",
                     "out_of_sync_reason", "pause_id", "pause_settled", "last_flip"]
        guard let row = rows.first(where: { $0[0] == name }) else { return [:] }
        var out: [String: String] = [:]
        for (i, n) in names.enumerated() where i < row.count { out[n] = row[i] }
        return out
    }
    func sqlState(_ command: String) -> String? {
        do { try admin().query(command); return nil } catch let e as PQError { return e.sqlState } catch { return "?" }
    }
    func start() throws {
        process = try ProxyFixture.startProxy(configPath: path, logPath: log, port: port)
    }
    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
    func stop() { stopBackgroundProcess(process) }
    func rowsOnNew() throws -> Int { Int(try f.recruitmentNew().scalar("SELECT count(*) FROM \(name)_items") ?? "") ?? -1 }
    func rowsOnLegacy() throws -> Int { Int(try f.recruitmentLegacy().scalar("SELECT count(*) FROM \(name)_items") ?? "") ?? -1 }
}

/// Polls `condition` every 50 ms for up to `seconds`; fails the test with `what` if it never holds.
func waitUntil(_ what: String, seconds: Double = 10, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if (try? condition()) == true { return }
        usleep(50_000)
    }
    Issue.record("timed out waiting until \(what)")
}
