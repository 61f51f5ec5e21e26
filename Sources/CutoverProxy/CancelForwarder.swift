// Sends one CancelRequest to a backend with that backend's real key, on a connection of its own.
import CutoverCore
import CutoverProtocol
import CutoverRuntime

/// Fire-and-forget: connect, send the 16-byte CancelRequest, close. PostgreSQL answers nothing.
final class CancelForwarder: TCPConnectionDelegate {
    let connection: TCPConnection
    let packet: [UInt8]
    private var selfReference: CancelForwarder?

    /// `address`: an IP address, or a Unix-domain socket file (starting with `/`; `port` is then unused).
    init(loop: EventLoop, address: String, port: Int, key: CancelRequest) {
        connection = TCPConnection(loop: loop)
        var w = ByteWriter()
        StartupPacket.cancel(key).encode(into: &w)
        packet = w.bytes
        super.init()
        connection.delegate = self
        selfReference = self // kept alive until the connection is done
        let failed = address.hasPrefix("/") ? connection.connect(unixPath: address) : connection.connect(host: address, port: port)
        if failed != nil { finish() }
    }

    deinit { connection.delegate = nil }

    override func connection(_ c: TCPConnection, didConnect error: Int32?) {
        if error != nil { return finish() }
        connection.write(packet)
        connection.closeAfterWrites()
        done()
    }

    override func connection(_ c: TCPConnection, didFail error: Int32?) { done() }

    private func finish() {
        connection.close()
        done()
    }

    /// Lets go of itself, after the callback that may be running now (its connection calls it unretained).
    private func done() {
        guard let me = selfReference else { return }
        connection.eventLoop.retire(me)
        selfReference = nil
    }
}
