// TLS on a client connection: the runtime's stream filter, backed by the OpenSSL engine.
import CutoverCore
import CutoverRuntime

/// Decrypts what the socket delivers and encrypts what the session writes; remembers why it failed, for the log.
final class TLSFilter: StreamFilter {
    let stream: TLSStream
    private(set) var failure: String?

    init(_ stream: TLSStream) { self.stream = stream }

    override func received(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void,
                           send: (UnsafeRawBufferPointer) -> Void) -> Outcome {
        do {
            let open = try stream.receive(bytes, deliver: deliver)
            stream.takeOutput(send)
            return open ? .open : .ended
        } catch {
            failure = "\(error)"
            stream.takeOutput(send) // an alert tells the peer why
            return .failed
        }
    }

    override func sending(_ bytes: UnsafeRawBufferPointer, send: (UnsafeRawBufferPointer) -> Void) -> Bool {
        do {
            try stream.send(bytes, output: send)
            return true
        } catch {
            failure = "\(error)"
            return false
        }
    }

    override func finishing(send: (UnsafeRawBufferPointer) -> Void) {
        stream.close()
        stream.takeOutput(send)
    }
}
