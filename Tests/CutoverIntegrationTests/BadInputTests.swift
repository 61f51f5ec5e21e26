// Integration: malformed and hostile input gets its SQLSTATE and closes only that connection.
import Foundation
import Testing
import CutoverProtocol

@Suite(.serialized) struct BadInputTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    /// Sends `bytes` on a fresh connection, returns (SQLSTATE of the answer, whether the proxy closed).
    func answer(to bytes: [UInt8], halfClose: Bool = false) throws -> (String?, Bool) {
        let c = try RawClient(port: f.proxyPort)
        c.send(bytes)
        if halfClose { c.shutdownWrite() }
        let (reply, closed) = c.readUntilClosed()
        return (RawClient.errorCode(in: reply), closed)
    }

    func startup(_ params: [(String, String)], version: Int32 = 196608) -> [UInt8] {
        var w = ByteWriter()
        w.beginMessage(nil)
        w.writeInt32(version)
        for (k, v) in params { w.writeCString(k); w.writeCString(v) }
        w.writeUInt8(0)
        w.endMessage()
        return w.bytes
    }

    @Test func eachBadInputGetsItsErrorWhileAnotherSessionCarriesOn() throws {
        let bystander = try f.connect()
        try bystander.query("BEGIN")
        try bystander.query("UPDATE candidates SET v = v + 1 WHERE id = 1")

        // Garbage: an absurd startup length.
        var (code, closed) = try answer(to: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(closed && code == "08P01", "garbage: \(String(describing: code))")
        // A 1 GB length prefix on the startup packet.
        (code, closed) = try answer(to: [0x40, 0, 0, 0, 0, 3, 0, 0])
        #expect(closed && code == "08P01", "1 GB startup: \(String(describing: code))")
        // A truncated startup: the length promises more than arrives, then the client half-closes.
        (code, closed) = try answer(to: Array(startup([("user", "onboarding_user")]).prefix(12)), halfClose: true)
        #expect(closed, "truncated startup must be closed")
        // Unknown protocol version.
        (code, closed) = try answer(to: startup([("user", "onboarding_user")], version: 0x0002_0000))
        #expect(closed && code == "08P01", "protocol 2.0: \(String(describing: code))")
        // Startup with a malformed parameter list (a key without a value).
        var bad = startup([])
        bad = [0, 0, 0, 14, 0, 3, 0, 0] + Array("user".utf8) + [0, 0]
        (code, closed) = try answer(to: bad)
        #expect(closed && code == "08P01", "malformed startup: \(String(describing: code))")
        // No user name.
        (code, closed) = try answer(to: startup([("database", "onboarding")]))
        #expect(closed && code == "28000", "no user: \(String(describing: code))")

        // Wrong password and unknown database through libpq.
        do { _ = try PQConnection(f.conninfo(password: "wrong")); Issue.record("wrong password accepted") } catch let e as PQError {
            #expect(e.message.contains("password authentication failed"))
        }
        do { _ = try PQConnection(f.conninfo(database: "cutover_nope_db")); Issue.record("unknown db accepted") } catch let e as PQError {
            #expect(e.message.contains("does not exist"))
        }
        // Each refusal is in the log with who and from where, never the password.
        usleep(100_000)
        let refusals = f.proxyLog.split(separator: "\n").filter { $0.contains("client login refused") }
        #expect(refusals.contains { $0.contains("warning") && $0.contains("sqlstate=28P01") && $0.contains("user=onboarding_user")
                                    && $0.contains("database=onboarding") && $0.contains("peer=127.0.0.1:") }, "\(refusals)")
        #expect(refusals.contains { $0.contains("notice") && $0.contains("sqlstate=08P01") && $0.contains("unsupported frontend protocol") },
                "a malformed startup is a notice: \(refusals)")
        #expect(refusals.contains { $0.contains("warning") && $0.contains("sqlstate=28000") })
        #expect(!f.proxyLog.contains("password=wrong") && !f.proxyLog.contains("=wrong "))
        // Names from an unauthenticated client reach the log cut short and escaped: no line of their own.
        let forged = "evil\n2026-12-04T00:00:00+0000 error cutover: forged=line" + String(repeating: "x", count: 5000)
        let (forgedCode, _) = try answer(to: startup([("user", forged), ("database", "onboarding"), ("replication", "true")]))
        #expect(forgedCode == "08P01")
        usleep(100_000)
        let lines = f.proxyLog.split(separator: "\n")
        #expect(!lines.contains { $0.hasPrefix("2026-12-04T00:00:00+0000 error cutover: forged=line") }, "no forged line")
        #expect(lines.contains { $0.contains("user=evil\\u{a}2026-12-04T00:00:00+0000") && $0.count < 600 }, "cut and escaped")
        // A flood of refusals: all counted, at most 10 lines a second written; the next line says how many were not.
        let logged = { f.proxyLog.split(separator: "\n").filter { $0.contains("client login refused") && $0.contains("sqlstate=28000") }.count }
        let before = logged()
        for _ in 0..<40 { _ = try answer(to: startup([("database", "onboarding")])) }
        usleep(100_000)
        #expect(logged() - before <= 21, "\(logged() - before) lines for 40 refusals")
        usleep(1_100_000)
        _ = try answer(to: startup([("database", "onboarding")]))
        usleep(100_000)
        #expect(f.proxyLog.contains("not_logged_before="), "the next line says how many were left out")
        // A startup packet longer than PostgreSQL accepts (10 000 bytes) is refused before it is read.
        let (tooLong, tooLongClosed) = try answer(to: startup([("user", "u"), ("database", "onboarding"), ("options", String(repeating: "y", count: 12_000))]))
        #expect(tooLong == "08P01" && tooLongClosed, "\(String(describing: tooLong))")

        // After login: a 1 GB length prefix on a typed message.
        let victim = try f.connect()
        #expect(try victim.scalar("SELECT 1") == "1")

        // The bystander's transaction is intact and commits.
        try bystander.query("COMMIT")
        #expect(try bystander.scalar("SELECT 'alive'") == "alive")
        #expect(f.proxy.isRunning)
    }

    @Test func oversizedTypedMessageAfterLoginIs08P01() throws {
        // Log in with trust (no exchange to script), then send a 'Q' claiming 1 GB.
        let c = try RawClient(port: f.proxyPort)
        c.send(startup([("user", "trust_user"), ("database", "hexabuilders")]))
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !got.contains(UInt8(ascii: "Z")) {
            let n = recv(c.fd, &buf, buf.count, 0)
            if n <= 0 { break }
            got += buf[0..<n]
        }
        #expect(got.first == UInt8(ascii: "R"))
        c.send([UInt8(ascii: "Q"), 0x40, 0, 0, 0] + Array("SELECT 1".utf8))
        let (reply, closed) = c.readUntilClosed()
        #expect(closed && RawClient.errorCode(in: reply) == "08P01")
    }
}
