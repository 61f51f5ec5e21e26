// Integration: statements and Bind parameters far larger than one read pass in every mirror mode, within a
// bound; sync mode used to stop reading the client mid-statement and wait for ever.
import Foundation
import Testing

@Suite(.serialized) struct LargeStatementTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    func roundTrip(mirror: String) throws {
        let p = try RouteProxy(f, "large\(mirror)", route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        let c = try p.client()
        let start = Date()
        // A simple Query of 2 MB (the reproduction: 500 KB and more hung in sync mode).
        let text = String(repeating: "x", count: 2_000_000)
        #expect(try c.scalar("SELECT length('\(text)')") == "2000000")
        // A 16 MB Bind parameter through the extended protocol (pgjdbc's `select ?::bytea`).
        let param = String(repeating: "ab", count: 8_000_000)
        #expect(try c.query("SELECT length($1::text)", [param]).first?.first == "16000000")
        #expect(Date().timeIntervalSince(start) < 60, "\(mirror): \(Date().timeIntervalSince(start)) s")
        // Both sides ran them: nothing was cut, nothing differs.
        try waitUntil("the follower answered") { try p.admin().query("SHOW STATS").first { $0[0] == "large\(mirror)" }?[5] == "0" }
        #expect(try p.route()["in_sync"] == "yes")
    }

    @Test func syncMode() throws { try roundTrip(mirror: "sync") }
    @Test func asyncMode() throws { try roundTrip(mirror: "async") }
}
