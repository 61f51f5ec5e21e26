// TLS on a client connection: the runtime's stream filter, backed by the OpenSSL engine.
import CutoverCore
import CutoverRuntime

/// Decrypts what the socket delivers and encrypts what the session writes; remembers why it failed, for the log.
final class TLSFilter: StreamFilter {
    let stream: TLSStream
    private(set) var failure: String?
    /// A direct TLS connection (no SSLRequest) must have chosen ALPN "postgresql", as PostgreSQL 17 requires:
    /// checked before the first plaintext is delivered (the protocol is settled by then).
    private var requiresALPN: Bool

    init(_ stream: TLSStream, requiresALPN: Bool = false) {
        self.stream = stream
        self.requiresALPN = requiresALPN
    }

    override func received(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void,
                           send: (UnsafeRawBufferPointer) -> Void) -> Outcome {
        do {
            var refused = false
            let open = try stream.receive(bytes) { plaintext in
                if requiresALPN {
                    guard stream.negotiatedPostgresALPN else { refused = true; return }
                    requiresALPN = false
                }
                if !refused { deliver(plaintext) }
            }
            stream.takeOutput(send)
            if refused {
                failure = "direct TLS connection without the ALPN protocol \"postgresql\""
                return .failed
            }
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
