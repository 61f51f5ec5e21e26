// Sends one CancelRequest to a backend with that backend's real key, on a connection of its own.
import CutoverCore
import CutoverProtocol
import CutoverRuntime

/// Fire-and-forget: connect, send the 16-byte CancelRequest, close. PostgreSQL answers nothing. A connect
/// that gets no answer within `timeoutMs` (the backend's host gone silent) is given up, so such cancels do
/// not pile up holding sockets until the kernel's own timeout.
final class CancelForwarder: TCPConnectionDelegate {
    let connection: TCPConnection
    let packet: [UInt8]
    private var selfReference: CancelForwarder?
    private var timer: LoopTimer?

    /// `address`: an IP address, or a Unix-domain socket file (starting with `/`; `port` is then unused).
    init(loop: EventLoop, address: String, port: Int, key: CancelRequest, timeoutMs: UInt64) {
        connection = TCPConnection(loop: loop)
        var w = ByteWriter()
        StartupPacket.cancel(key).encode(into: &w)
        packet = w.bytes
        super.init()
        connection.delegate = self
        selfReference = self // kept alive until the connection is done
        let failed = address.hasPrefix("/") ? connection.connect(unixPath: address) : connection.connect(host: address, port: port)
        if failed != nil {
            finish()
            return
        }
        let t = LoopTimer(loop: loop) { [unowned self] in self.finish() }
        t.start(timeoutMs: max(timeoutMs, 1))
        timer = t
    }

    deinit { connection.delegate = nil }

    override func connection(_ c: TCPConnection, didConnect error: Int32?) {
        stopTimer()
        if error != nil { return finish() }
        connection.write(packet)
        connection.closeAfterWrites()
        done()
    }

    override func connection(_ c: TCPConnection, didFail error: Int32?) {
        stopTimer()
        done()
    }

    private func finish() {
        stopTimer()
        connection.close()
        done()
    }

    private func stopTimer() {
        timer?.close()
        timer = nil
    }

    /// Lets go of itself, after the callback that may be running now (its connection calls it unretained).
    private func done() {
        guard let me = selfReference else { return }
        connection.eventLoop.retire(me)
        selfReference = nil
    }
}
