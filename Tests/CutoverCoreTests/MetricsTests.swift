// Pure tests of the observability endpoint's parts: Prometheus exposition and HTTP request heads.
import Testing
@testable import CutoverCore

@Suite struct MetricsTests {
    @Test func expositionHasHelpTypeAndEscapedLabels() {
        var m = PrometheusText()
        m.family("cutover_route_sessions", .gauge, "Sessions on the route")
        m.sample("cutover_route_sessions", ["route": "on\"board\\ing\nx"], 3)
        m.sample("cutover_uptime_seconds", 1.5)
        m.sample("cutover_nan", .nan)
        #expect(m.text == """
            # HELP cutover_route_sessions Sessions on the route
            # TYPE cutover_route_sessions gauge
            cutover_route_sessions{route="on\\"board\\\\ing\\nx"} 3
            cutover_uptime_seconds 1.5
            cutover_nan NaN

            """)
        #expect(PrometheusText.format(12_345_678) == "12345678" && PrometheusText.format(.infinity) == "+Inf")
    }

    @Test func requestHeadIsReadWhateverTheChunksAndRefusedWhenMalformedOrLarge() throws {
        let request = Array("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n".utf8)
        // Fed one byte at a time: nothing until the blank line, then the head.
        var got: [HTTPRequestHead] = []
        for n in 1...request.count {
            if let head = try HTTPRequestHead.parse(Array(request[..<n])) { got.append(head); #expect(n == request.count) }
        }
        #expect(got == [HTTPRequestHead(method: "GET", path: "/metrics")])
        #expect(throws: HTTPRequestHead.Problem.malformed) { try HTTPRequestHead.parse(Array("\u{16}\u{03}\u{01}junk\r\n\r\n".utf8)) }
        #expect(throws: HTTPRequestHead.Problem.malformed) { try HTTPRequestHead.parse(Array("GET metrics HTTP/1.1\r\n\r\n".utf8)) }
        #expect(throws: HTTPRequestHead.Problem.tooLarge) { try HTTPRequestHead.parse(Array(repeating: UInt8(ascii: "a"), count: 9000)) }
        let response = String(decoding: HTTPRequestHead.response(status: 503, reason: "Service Unavailable", body: "shutting down\n"), as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n") && response.contains("Content-Length: 14\r\n")
                && response.hasSuffix("\r\n\r\nshutting down\n"))
    }
}
