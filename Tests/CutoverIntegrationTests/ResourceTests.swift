// Integration: memory stays bounded with a slow reader of a huge result and with thousands of idle clients.
import CLibPQ
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct ResourceTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func slowReaderOf500MBKeepsProxyMemoryBounded() throws {
        let before = f.proxyRSSKiB()
        // psql streams COPY output to a reader that sleeps between reads: the proxy must stop reading
        // the backend rather than buffer the result.
        let script = """
            import sys, time
            total = 0
            while True:
                b = sys.stdin.buffer.read(1 << 20)
                if not b: break
                total += len(b)
                time.sleep(0.004)
            print(total)
            """
        try script.write(toFile: "\(f.directory)/slow.py", atomically: true, encoding: .utf8)
        let copy = "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 500000)) TO STDOUT"
        let pipeline = "psql -X -h 127.0.0.1 -p \(f.proxyPort) -U onboarding_user -d onboarding -c \"\(copy)\" | python3 \(f.directory)/slow.py"
        let sampler = PeakRSSSampler(f)
        let r = try runProcess("/bin/sh", ["-c", pipeline], environment: f.clientEnvironment, timeout: 600)
        let peak = sampler.stop()
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(500_000 * 1001)")
        let growth = peak - before
        print("slow reader: proxy RSS before \(before) KiB, peak \(peak) KiB, growth \(growth) KiB")
        #expect(growth < 8 * 1024, "proxy RSS grew \(growth) KiB while a slow client read 500 MB")
    }

    @Test func twoThousandIdleClientsHaveBoundedMemory() throws {
        var lim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        lim.rlim_cur = lim.rlim_max
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        let count = 2000
        let before = f.proxyRSSKiB()
        var conns: [OpaquePointer] = []
        defer { conns.forEach { PQfinish($0) } }
        for i in 0..<count {
            guard let c = PQconnectdb(f.conninfo(database: "hexabuilders", user: "trust_user")), PQstatus(c) == CONNECTION_OK else {
                Issue.record("connection \(i) failed")
                return
            }
            conns.append(c)
        }
        usleep(500_000)
        let after = f.proxyRSSKiB()
        let perClient = Double(after - before) * 1024 / Double(count)
        print("idle clients: \(count), proxy RSS before \(before) KiB, after \(after) KiB, \(Int(perClient)) bytes per client (incl. its backend connection)")
        #expect(perClient < 16 * 1024, "\(perClient) bytes per idle client")
        // They all still work.
        let res = PQexec(conns.last!, "SELECT 1")
        #expect(PQresultStatus(res) == PGRES_TUPLES_OK)
        PQclear(res)
    }
}
