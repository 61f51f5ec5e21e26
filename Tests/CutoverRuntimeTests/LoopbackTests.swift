// Loopback runtime tests: real sockets on one loop, no PostgreSQL. Byte-exactness, backpressure, clean close.
import Glibc
import Testing
@testable import CutoverRuntime

/// Echoes everything it reads, pausing reads while its own write queue is above a mark.
final class EchoPeer: TCPConnectionDelegate {
    let connection: TCPConnection
    var pausedCount = 0
    init(_ c: TCPConnection) { connection = c; super.init(); c.delegate = self; c.startReading() }
    deinit { connection.delegate = nil }
    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        c.write(bytes)
        if c.queuedBytes > 64 << 10 { pausedCount += 1; c.stopReading() }
    }
    override func connectionDidDrain(_ c: TCPConnection) { c.startReading() }
    override func connection(_ c: TCPConnection, didConnect error: Int32?) {}
    override func connection(_ c: TCPConnection, didFail error: Int32?) {}
}

/// Collects what it reads once told to start, and how the stream ended.
final class Collector: TCPConnectionDelegate {
    let connection: TCPConnection
    var received: [UInt8] = []
    var ended = false
    var endError: Int32?
    init(_ c: TCPConnection) { connection = c; super.init(); c.delegate = self }
    deinit { connection.delegate = nil }
    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) { received.append(contentsOf: bytes) }
    override func connectionDidDrain(_ c: TCPConnection) {}
    override func connection(_ c: TCPConnection, didConnect error: Int32?) {}
    override func connection(_ c: TCPConnection, didFail error: Int32?) { ended = true; endError = error }
}

/// Sends a payload and collects what comes back.
final class Sender: TCPConnectionDelegate {
    let connection: TCPConnection
    let payload: [UInt8]
    var received: [UInt8] = []
    var connectError: Int32?? = nil
    var failed = false
    init(_ c: TCPConnection, payload: [UInt8]) { connection = c; self.payload = payload; super.init(); c.delegate = self }
    deinit { connection.delegate = nil }
    override func connection(_ c: TCPConnection, didConnect error: Int32?) {
        connectError = .some(error)
        guard error == nil else { return }
        c.startReading()
        c.write(payload)
    }
    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) { received.append(contentsOf: bytes) }
    override func connectionDidDrain(_ c: TCPConnection) {}
    override func connection(_ c: TCPConnection, didFail error: Int32?) { failed = true }
}

/// Lets go of itself on the first bytes it reads (as a session ending on a Terminate does), then goes on
/// working: the loop must keep it alive until the callback has returned. Its deinit reports what it counted.
final class LetGoOnRead: TCPConnectionDelegate {
    let connection: TCPConnection
    var letGo: () -> Void = {}
    var onDeinit: (Int) -> Void = { _ in }
    var countedAfterLetGo = 0
    init(_ c: TCPConnection) { connection = c; super.init(); c.delegate = self; c.startReading() }
    deinit {
        connection.delegate = nil
        connection.close()
        onDeinit(countedAfterLetGo)
    }
    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        c.eventLoop.retire(self)
        letGo() // the owner's last reference goes here
        countedAfterLetGo += bytes.count
    }
}

/// glibc's size of a heap block (malloc.h is not in the Glibc module).
@_silgen_name("malloc_usable_size") func mallocUsableSize(_ block: UnsafeMutableRawPointer) -> Int

/// A stand-in for TLS: XOR both ways, a greeting sent on the first bytes read, a last word at close, and a
/// failure on the byte 0xFF (before XOR).
final class XorFilter: StreamFilter {
    var greeted = false
    override func received(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void,
                           send: (UnsafeRawBufferPointer) -> Void) -> Outcome {
        if bytes.contains(0xFF) { return .failed }
        if !greeted { greeted = true; Array("hi".utf8).withUnsafeBytes { send($0) } }
        Array(bytes.map { $0 ^ 0x5A }).withUnsafeBytes { deliver($0) }
        return .open
    }
    override func sending(_ bytes: UnsafeRawBufferPointer, send: (UnsafeRawBufferPointer) -> Void) -> Bool {
        Array(bytes.map { $0 ^ 0x5A }).withUnsafeBytes { send($0) }
        return true
    }
    override func finishing(send: (UnsafeRawBufferPointer) -> Void) { Array("bye".utf8).withUnsafeBytes { send($0) } }
}

@Suite(.serialized) struct LoopbackTests {
    @Test func aFilterDecodesReadsEncodesWritesSpeaksFirstAndLastAndCanFailTheConnection() throws {
        let loop = EventLoop()
        var peers: [Collector] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) {
            let c = Collector($0)
            $0.filter = XorFilter()
            $0.startReading()
            peers.append(c)
        }
        let sender = Sender(TCPConnection(loop: loop), payload: [1, 2, 3])
        _ = sender.connection.connect(host: "127.0.0.1", port: listener.port)
        var spins = 0
        while (peers.isEmpty || peers[0].received.count < 3) && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        let decoded: [UInt8] = [1 ^ 0x5A, 2 ^ 0x5A, 3 ^ 0x5A]
        #expect(peers[0].received == decoded, "the delegate sees decoded bytes")
        #expect(peers[0].connection.write([7, 8]))
        peers[0].connection.closeAfterWrites()
        spins = 0
        while !sender.failed && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        let encoded: [UInt8] = [7 ^ 0x5A, 8 ^ 0x5A]
        let expected: [UInt8] = Array("hi".utf8) + encoded + Array("bye".utf8)
        #expect(sender.received == expected, "the socket gets the filter's greeting, the encoded write and its last word, in order")

        // A failing filter fails its connection with EPROTO.
        let second = Sender(TCPConnection(loop: loop), payload: [0xFF])
        _ = second.connection.connect(host: "127.0.0.1", port: listener.port)
        spins = 0
        while (peers.count < 2 || !peers[1].ended) && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(peers.count == 2 && peers[1].ended && peers[1].endError == -EPROTO && peers[1].received.isEmpty)
        second.connection.close()
        listener.close()
        #expect(loop.shutdown() == 0)
    }

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

    @Test func aConnectionStaysAnEightyByteAllocation() {
        // Two per session, so 16 more bytes here are 32 per idle client (see docs/benchmarks.md, RSS per client).
        let loop = EventLoop()
        // The smallest of several: malloc may hand a single request a larger free chunk it would not split.
        let connections = (0..<32).map { _ in TCPConnection(loop: loop) }
        let usable = connections.map { mallocUsableSize(Unmanaged.passUnretained($0).toOpaque()) }.min() ?? 0
        #expect(usable <= 72, "a TCPConnection now takes a \(usable + 8)-byte malloc chunk")
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

    @Test func writesTheKernelRefusesAreQueuedDrainedInOrderAndDeliveredBeforeACloseAfterWrites() throws {
        let loop = EventLoop()
        var peers: [Collector] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { peers.append(Collector($0)) }
        // The sender writes 16 MB in 64 KiB pieces before the peer reads anything: the kernel's buffers fill
        // and the rest must wait in the connection's own queue, in order.
        var payload = [UInt8](repeating: 0, count: 16 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 11) }
        let sender = Sender(TCPConnection(loop: loop), payload: [])
        #expect(sender.connection.connect(host: "127.0.0.1", port: listener.port) == nil)
        var spins = 0
        while (sender.connectError == nil || peers.isEmpty) && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        for start in stride(from: 0, to: payload.count, by: 64 << 10) {
            #expect(payload[start..<min(start + (64 << 10), payload.count)].withUnsafeBytes { sender.connection.write($0) })
        }
        let queued = sender.connection.queuedBytes
        #expect(queued > 0, "the kernel took all 16 MB at once: the queue was not exercised")
        sender.connection.closeAfterWrites()
        #expect(!sender.connection.isClosing, "closed with \(queued) bytes still queued")
        peers[0].connection.startReading()
        spins = 0
        while !peers[0].ended && spins < 100_000 { loop.runOnce(wait: true); spins += 1 }
        #expect(peers[0].received.count == payload.count)
        #expect(peers[0].received == payload)
        #expect(peers[0].ended && peers[0].endError == nil, "the peer saw a clean EOF after the last byte")
        #expect(sender.connection.isClosing && sender.connection.queuedBytes == 0)
        listener.close()
        #expect(loop.shutdown() == 0)
    }

    @Test func anOnDemandConnectionDeliversOnlyWhenAskedAndIsPolledAgainWhenSwitchedBack() throws {
        let loop = EventLoop(readBufferSize: 16 << 10)
        var peers: [Collector] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { c in
            let p = Collector(c)
            c.readsOnDemand = true
            c.startReading()
            peers.append(p)
        }
        var payload = [UInt8](repeating: 0, count: 200_000)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 13 &+ i >> 7) }
        let half = payload.count / 2
        let sender = Sender(TCPConnection(loop: loop), payload: [])
        #expect(sender.connection.connect(host: "127.0.0.1", port: listener.port) == nil)
        var spins = 0
        while (sender.connectError == nil || peers.isEmpty) && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(payload[..<half].withUnsafeBytes { sender.connection.write($0) })
        for _ in 0..<200 { loop.runOnce() }
        #expect(peers[0].received.isEmpty, "an on-demand connection was read without being asked")
        // readNow takes everything that has arrived, several read-buffer-fulls at a time.
        spins = 0
        while peers[0].received.count < half && spins < 10_000 { loop.runOnce(); peers[0].connection.readNow(); spins += 1 }
        #expect(peers[0].received == Array(payload[..<half]))
        #expect(!peers[0].connection.readNow(), "nothing more had arrived")
        // Polled again: the rest and the EOF arrive without being asked for.
        peers[0].connection.readsOnDemand = false
        #expect(payload[half...].withUnsafeBytes { sender.connection.write($0) })
        sender.connection.closeAfterWrites()
        spins = 0
        while !peers[0].ended && spins < 10_000 { loop.runOnce(wait: true); spins += 1 }
        #expect(peers[0].received == payload)
        #expect(peers[0].ended && peers[0].endError == nil)

        // On demand, the end of the stream is seen by the read that asks for it.
        let sender2 = Sender(TCPConnection(loop: loop), payload: [])
        #expect(sender2.connection.connect(host: "127.0.0.1", port: listener.port) == nil)
        spins = 0
        while (sender2.connectError == nil || peers.count < 2) && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        sender2.connection.write([1, 2, 3])
        sender2.connection.closeAfterWrites()
        for _ in 0..<200 { loop.runOnce() }
        #expect(peers[1].received.isEmpty && !peers[1].ended)
        spins = 0
        while !peers[1].ended && spins < 1000 { peers[1].connection.readNow(); loop.runOnce(); spins += 1 }
        #expect(peers[1].received == [1, 2, 3] && peers[1].ended && peers[1].endError == nil)
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

    @Test func soonRunsAtTheNextIterationNotInsideTheCallAndLeavesNoHandle() {
        let loop = EventLoop()
        var ran = false
        loop.soon { ran = true }
        #expect(!ran, "not from inside the call")
        #expect(loop.liveHandles == 1)
        loop.runOnce(wait: true)
        #expect(ran)
        loop.runOnce()
        #expect(loop.liveHandles == 0, "its timer is closed once it ran")
        #expect(loop.shutdown() == 0)
    }

    @Test func aDelegateLetGoOfInItsOwnCallbackIsFreedOnlyOnceTheCallbackHasReturned() throws {
        // Connections call their delegates unretained: without `retire`, this delegate would be freed inside
        // its own callback, and its deinit would report 0.
        let loop = EventLoop()
        var held: LetGoOnRead?
        var reported: [Int] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { c in
            let d = LetGoOnRead(c)
            d.letGo = { held = nil }
            d.onDeinit = { reported.append($0) }
            held = d
        }
        let sender = Sender(TCPConnection(loop: loop), payload: [1, 2, 3])
        #expect(sender.connection.connect(host: "127.0.0.1", port: listener.port) == nil)
        var spins = 0
        while reported.isEmpty && spins < 1000 { loop.runOnce(wait: true); spins += 1 }
        #expect(held == nil)
        #expect(reported == [3], "freed after its callback returned, not inside it")
        sender.connection.close()
        listener.close()
        for _ in 0..<10 { loop.runOnce() }
        #expect(loop.liveHandles == 0, "the loop's own retire check is not counted")
        #expect(loop.shutdown() == 0)
    }

    @Test func aConnectionLetGoOfWhileConnectingIsClosedNotLeaked() throws {
        // A session ending while its backend connect is in flight: with nothing queued, closeAfterWrites
        // closes at once; before, the completed connect left the socket open and the handle alive for good.
        let loop = EventLoop()
        var peers: [Collector] = []
        let listener = try TCPListener(loop: loop, host: "127.0.0.1", port: 0) { c in
            peers.append(Collector(c))
            c.startReading()
        }
        let quiet = TCPConnection(loop: loop)
        #expect(quiet.connect(host: "127.0.0.1", port: listener.port) == nil)
        quiet.closeAfterWrites() // before the connect has completed
        // One with a write queued behind the connect still gets it out, then closes.
        let talker = TCPConnection(loop: loop)
        #expect(talker.connect(host: "127.0.0.1", port: listener.port) == nil)
        talker.write([1, 2, 3])
        talker.closeAfterWrites()
        var spins = 0 // not blocking: with the leak, nothing more would ever happen on the loop
        while (peers.count < 2 || !peers.allSatisfy(\.ended)) && spins < 2000 { loop.runOnce(); usleep(1000); spins += 1 }
        #expect(peers.count == 2 && peers.allSatisfy(\.ended), "both peers saw their connection end")
        #expect(peers.map(\.received).sorted { $0.count < $1.count } == [[], [1, 2, 3]])
        peers.forEach { $0.connection.close() }
        listener.close()
        for _ in 0..<10 { loop.runOnce() }
        #expect(loop.liveHandles == 0, "neither connection is left open")
        #expect(loop.shutdown() == 0)
    }

    @Test func hostLookupsResolveOffTheLoopAndReportFailures() {
        let loop = EventLoop()
        var results: [String: ([String], String?)] = [:]
        for host in ["localhost", "nowhere.invalid", "127.0.0.1"] {
            HostLookup.start(loop: loop, host: host) { results[host] = ($0, $1) }
        }
        #expect(results.isEmpty, "answers come from the loop, not from inside start")
        var spins = 0
        while results.count < 3 && spins < 2000 { loop.runOnce(wait: true); spins += 1 }
        #expect(results["localhost"]?.0.contains("127.0.0.1") == true && results["localhost"]?.1 == nil)
        #expect(results["127.0.0.1"]?.0 == ["127.0.0.1"])
        #expect(results["nowhere.invalid"]?.0 == [] && results["nowhere.invalid"]?.1?.isEmpty == false,
                "a name that does not resolve says why: \(String(describing: results["nowhere.invalid"]?.1))")
        #expect(loop.shutdown() == 0)
    }

    @Test func keepaliveOptionsReachTheSocket() {
        func option(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32 {
            var v: Int32 = -1
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, level, name, &v, &size)
            return v
        }
        let tcp = Int32(IPPROTO_TCP)
        let fd = Socket.open(family: sa_family_t(AF_INET))
        defer { close(fd) }
        Socket.setKeepalive(fd, TCPKeepalive(enabled: true, idleSeconds: 61, intervalSeconds: 7, count: 4, userTimeoutMs: 12_000))
        #expect(option(fd, SOL_SOCKET, SO_KEEPALIVE) == 1)
        #expect(option(fd, tcp, TCP_KEEPIDLE) == 61 && option(fd, tcp, TCP_KEEPINTVL) == 7 && option(fd, tcp, TCP_KEEPCNT) == 4)
        #expect(option(fd, tcp, Int32(TCP_USER_TIMEOUT)) == 12_000)
        // Zeros keep the kernel's values; off turns the probes off.
        let other = Socket.open(family: sa_family_t(AF_INET))
        defer { close(other) }
        let kernelIdle = option(other, tcp, TCP_KEEPIDLE)
        Socket.setKeepalive(other, TCPKeepalive(enabled: false))
        #expect(option(other, SOL_SOCKET, SO_KEEPALIVE) == 0 && option(other, tcp, TCP_KEEPIDLE) == kernelIdle)
        #expect(option(other, tcp, Int32(TCP_USER_TIMEOUT)) == 0)
    }
}
