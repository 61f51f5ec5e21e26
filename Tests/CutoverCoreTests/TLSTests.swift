// The TLS engine over memory buffers: a server and a client stream wired to each other in memory, no sockets.
import Foundation
import Testing
@testable import CutoverNative
import CutoverTestSupport

/// Two streams and what each has received, pumped by hand.
final class TLSPair {
    let server: TLSStream
    let client: TLSStream
    var toServer: [UInt8] = []
    var toClient: [UInt8] = []
    var serverGot: [UInt8] = []
    var clientGot: [UInt8] = []

    init(server: TLSContext, client: TLSContext, serverName: String? = "localhost") throws {
        self.server = try TLSStream(context: server)
        self.client = try TLSStream(context: client, serverName: serverName)
        try self.client.start()
        collect()
    }

    func collect() {
        server.takeOutput { toClient.append(contentsOf: $0) }
        client.takeOutput { toServer.append(contentsOf: $0) }
    }

    /// Moves every pending byte across, `chunk` bytes per `receive`, until both sides are quiet.
    func pump(chunk: Int = .max) throws {
        while !toServer.isEmpty || !toClient.isEmpty {
            let s = toServer, c = toClient
            toServer = []; toClient = []
            for part in s.chunked(chunk) {
                _ = try part.withUnsafeBytes { try server.receive($0) { serverGot.append(contentsOf: $0) } }
            }
            for part in c.chunked(chunk) {
                _ = try part.withUnsafeBytes { try client.receive($0) { clientGot.append(contentsOf: $0) } }
            }
            collect()
        }
    }
}

extension Array {
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, Swift.min(size, count))).map { self[$0..<Swift.min($0 + size, count)] }
    }
}

@Suite struct TLSTests {
    @Test func aHandshakeFedOneByteAtATimeCarriesDataBothWays() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        let pair = try TLSPair(server: TLSContext(certificateFile: cert.certificate, keyFile: cert.key),
                               client: TLSContext(caFile: cert.certificate))
        // Sent before the handshake is done: queued and written once it is.
        try Array("early".utf8).withUnsafeBytes { try pair.client.send($0) }
        try pair.pump(chunk: 1)
        #expect(pair.server.isEstablished && pair.client.isEstablished)
        #expect(pair.server.protocolVersion == "TLSv1.3")
        #expect(pair.server.cipher != nil)
        #expect(pair.serverGot == Array("early".utf8))

        let big = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) } // several records
        var slices = 0
        try big.withUnsafeBytes { try pair.server.send($0) { slices += 1; pair.toClient.append(contentsOf: $0) } }
        #expect(slices >= 6, "a large write is handed out a record at a time")
        try pair.pump(chunk: 40_000)
        #expect(pair.clientGot == big)
        #expect(pair.client.bufferCapacity <= 2 * 4096 && pair.server.bufferCapacity <= 2 * 4096,
                "idle again, neither side keeps a large buffer: \(pair.client.bufferCapacity), \(pair.server.bufferCapacity)")
    }

    @Test func closeNotifyEndsTheStream() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        let pair = try TLSPair(server: TLSContext(certificateFile: cert.certificate, keyFile: cert.key),
                               client: TLSContext(caFile: nil))
        try pair.pump()
        // A server closing while it delivers (a session failing its client) has not been closed by the peer:
        // the stream is not "ended", so the connection can still write its last words.
        try Array("two messages".utf8).withUnsafeBytes { try pair.client.send($0) }
        pair.collect()
        let stillOpen = try pair.toServer.withUnsafeBytes { try pair.server.receive($0) { _ in pair.server.close() } }
        #expect(stillOpen && !pair.server.peerClosed && pair.server.isClosed)
        pair.toServer = []
        pair.collect()
        let clientOpen = try pair.toClient.withUnsafeBytes { try pair.client.receive($0) { _ in } }
        #expect(!clientOpen && pair.client.peerClosed, "the server's close_notify reached the client")
        pair.client.close()
        pair.collect()
        #expect(!pair.toServer.isEmpty, "close_notify is output")
        let open = try pair.toServer.withUnsafeBytes { try pair.server.receive($0) { _ in } }
        #expect(!open && pair.server.peerClosed)
    }

    @Test func garbageInsteadOfAClientHelloFailsWithOpenSSLsReason() throws {
        let cert = try SelfSignedCertificate()
        defer { cert.remove() }
        let server = try TLSStream(context: TLSContext(certificateFile: cert.certificate, keyFile: cert.key))
        // A client that did not wait for the 'S' and sent its StartupMessage in clear text.
        let startup: [UInt8] = [0, 0, 0, 8, 0, 3, 0, 0]
        do {
            _ = try startup.withUnsafeBytes { try server.receive($0) { _ in } }
            Issue.record("clear text was taken for a ClientHello")
        } catch {
            #expect("\(error)".hasPrefix("TLS handshake failed: error:"), "OpenSSL's reason is appended: \(error)")
        }
        #expect(!server.isEstablished)
    }

    @Test func aClientThatVerifiesRefusesAServerItsCADidNotSign() throws {
        let cert = try SelfSignedCertificate(), other = try SelfSignedCertificate()
        defer { cert.remove(); other.remove() }
        let pair = try TLSPair(server: TLSContext(certificateFile: cert.certificate, keyFile: cert.key),
                               client: TLSContext(caFile: other.certificate))
        #expect(throws: TLSError.self) { try pair.pump() }
        #expect(!pair.client.isEstablished)
    }

    @Test func aClientThatVerifiesRefusesACertificateForAnotherHost() throws {
        let cert = try SelfSignedCertificate(commonName: "db.example")
        defer { cert.remove() }
        let pair = try TLSPair(server: TLSContext(certificateFile: cert.certificate, keyFile: cert.key),
                               client: TLSContext(caFile: cert.certificate), serverName: "localhost")
        #expect(throws: TLSError.self) { try pair.pump() }
    }

    @Test func missingOrMismatchedFilesAreNamedInTheError() throws {
        let cert = try SelfSignedCertificate(), other = try SelfSignedCertificate()
        defer { cert.remove(); other.remove() }
        do {
            _ = try TLSContext(certificateFile: cert.directory + "/nope.crt", keyFile: cert.key)
            Issue.record("a missing certificate file was accepted")
        } catch { #expect("\(error)".contains("nope.crt")) }
        do {
            _ = try TLSContext(certificateFile: cert.certificate, keyFile: other.key)
            Issue.record("a key of another certificate was accepted")
        } catch { #expect("\(error)".contains(other.key) && "\(error)".contains("mismatch"), "\(error)") }
    }
}
