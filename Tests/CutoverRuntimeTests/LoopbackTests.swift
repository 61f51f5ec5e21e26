// Loopback runtime tests: real sockets on one loop, no PostgreSQL. Byte-exactness, backpressure, clean close.
import Testing
@testable import CutoverRuntime

/// Echoes everything it reads, pausing reads while its own write queue is above a mark.
final class EchoPeer: TCPConnectionDelegate {
    let connection: TCPConnection
    var pausedCount = 0
    init(_ c: TCPConnection) { connection = c; c.delegate = self; c.startReading() }
    deinit { connection.delegate = nil }
    func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        c.write(bytes)
        if c.queuedBytes > 64 << 10 { pausedCount += 1; c.stopReading() }
    }
    func connectionDidDrain(_ c: TCPConnection) { c.startReading() }
    func connection(_ c: TCPConnection, didConnect error: Int32?) {}
    func connection(_ c: TCPConnection, didFail error: Int32?) {}
}

/// Sends a payload and collects what comes back.
final class Sender: TCPConnectionDelegate {
    let connection: TCPConnection
    let payload: [UInt8]
    var received: [UInt8] = []
    var connectError: Int32?? = nil
    var failed = false
    init(_ c: TCPConnection, payload: [UInt8]) { connection = c; self.payload = payload; c.delegate = self }
    deinit { connection.delegate = nil }
    func connection(_ c: TCPConnection, didConnect error: Int32?) {
        connectError = .some(error)
        guard error == nil else { return }
        c.startReading()
        c.write(payload)
    }
    func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) { received.append(contentsOf: bytes) }
    func connectionDidDrain(_ c: TCPConnection) {}
    func connection(_ c: TCPConnection, didFail error: Int32?) { failed = true }
}

@Suite(.serialized) struct LoopbackTests {
    @Test func echoOfEightMegabytesIsByteExactAndCloseLeavesNothingOpen() throws {
        let loop = EventLoop()
        var peers: [EchoPeer] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { peers.append(EchoPeer($0)) }
        #expect(listener.port > 0)
        var payload = [UInt8](repeating: 0, count: 8 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 9) }
        let sender = Sender(TCPConnection(loop: loop), payload: payload)
        #expect(sender.connection.connect(host: "127.0.0.1", port: listener.port) == nil)
        var spins = 0
        while sender.received.count < payload.count && spins < 200_000 { loop.runOnce(wait: true); spins += 1 }
        #expect(sender.received == payload)
        #expect(peers.count == 1)
        sender.connection.close()
        peers.forEach { $0.connection.close() }
        listener.close()
        for _ in 0..<10 { loop.runOnce() }
        #expect(loop.liveHandles == 0)
        #expect(loop.shutdown() == 0)
    }

    @Test func refusedConnectIsReported() throws {
        let loop = EventLoop()
        // Bind then close to get a port nobody listens on.
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { _ in }
        let port = listener.port
        listener.close()
        loop.runOnce()
        let sender = Sender(TCPConnection(loop: loop), payload: [1])
        #expect(sender.connection.connect(host: "127.0.0.1", port: port) == nil)
        var spins = 0
        while sender.connectError == nil && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(sender.connectError! != nil)
        sender.connection.close()
        #expect(loop.shutdown() == 0)
    }

    @Test func peerCloseIsAFailureWithoutError() throws {
        let loop = EventLoop()
        var peers: [EchoPeer] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { peers.append(EchoPeer($0)) }
        let sender = Sender(TCPConnection(loop: loop), payload: [1, 2, 3])
        _ = sender.connection.connect(host: "127.0.0.1", port: listener.port)
        var spins = 0
        while sender.received.count < 3 && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        peers[0].connection.closeAfterWrites()
        spins = 0
        while !sender.failed && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(sender.failed && sender.connection.isClosing)
        listener.close()
        #expect(loop.shutdown() == 0)
    }

    @Test func timerFiresAndClosesCleanly() {
        let loop = EventLoop()
        var fired = 0
        let timer = LoopTimer(loop: loop) { fired += 1 }
        timer.start(timeoutMs: 1, repeatMs: 1)
        var spins = 0
        while fired < 3 && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(fired >= 3)
        timer.close()
        #expect(loop.shutdown() == 0)
    }
}
