// TLS from OpenSSL's libssl over memory buffers: an engine fed with a socket's bytes, with no I/O of its own.
import COpenSSL
import Glibc

/// A TLS failure, with OpenSSL's reason when it gave one.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }

    /// `what`, followed by the reasons OpenSSL queued on this thread (the queue is emptied).
    static func fromQueue(_ what: String) -> TLSError {
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return TLSError(reasons.isEmpty ? what : "\(what): \(reasons.joined(separator: "; "))")
    }
}

/// Certificates and settings shared by every TLS connection of one kind. Immutable once built, so one
/// context serves all connections; a reload builds a new one (connections keep the context they started with).
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let isServer: Bool
    /// A server's channel binding data for SCRAM-SHA-256-PLUS (RFC 5929 `tls-server-end-point`: the hash of
    /// its certificate); nil for a client context or a certificate whose signature names no usable hash.
    /// (A `var` with a default on purpose: every stored property is set before the first `throw` below, so
    /// a failed init still runs `deinit` and frees the OpenSSL context.)
    public private(set) var serverEndPoint: [UInt8]?

    /// A server context from PEM files: the certificate file may hold the chain after the certificate.
    /// With `clientCAFile`, clients are asked for a certificate chaining to those CAs (see
    /// `TLSStream.verifiedPeerCommonName`): one that sends none still connects, one whose certificate does
    /// not verify fails the handshake. With `clientCRLFile` (PEM, one CRL per CA of the chain), a revoked
    /// client certificate, or one whose issuer's CRL is missing or past its next update, does not verify.
    public init(certificateFile: String, keyFile: String, clientCAFile: String? = nil, clientCRLFile: String? = nil) throws {
        ERR_clear_error()
        guard let c = SSL_CTX_new(TLS_server_method()) else { throw TLSError.fromQueue("cannot create a TLS context") }
        context = c
        isServer = true
        cutover_ssl_ctx_configure(c)
        guard SSL_CTX_use_certificate_chain_file(c, certificateFile) == 1 else {
            throw TLSError.fromQueue("cannot load the certificate \(certificateFile)")
        }
        guard SSL_CTX_use_PrivateKey_file(c, keyFile, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError.fromQueue("cannot load the private key \(keyFile)")
        }
        guard SSL_CTX_check_private_key(c) == 1 else {
            throw TLSError.fromQueue("the private key \(keyFile) does not match the certificate \(certificateFile)")
        }
        serverEndPoint = Self.endPoint(of: SSL_CTX_get0_certificate(c))
        cutover_ssl_ctx_offer_postgresql_alpn(c)
        if let clientCAFile {
            guard SSL_CTX_load_verify_locations(c, clientCAFile, nil) == 1 else {
                throw TLSError.fromQueue("cannot load the client CA certificates \(clientCAFile)")
            }
            // The CertificateRequest names these CAs, so a client with several certificates picks the right one.
            cutover_ssl_ctx_request_client_certificates(c, SSL_load_client_CA_file(clientCAFile))
            if let clientCRLFile {
                let added = cutover_ssl_ctx_load_crls(c, clientCRLFile)
                guard added > 0 else {
                    throw added == 0 ? TLSError("\(clientCRLFile) holds no certificate revocation list (PEM, -----BEGIN X509 CRL-----)")
                                     : TLSError.fromQueue("cannot load the certificate revocation list \(clientCRLFile)")
                }
            }
        }
    }

    /// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash function, SHA-256
    /// in place of MD5 and SHA-1 (as PostgreSQL computes it). Nil when the signature names none (Ed25519).
    static func endPoint(of certificate: OpaquePointer?) -> [UInt8]? {
        guard let certificate else { return nil }
        // X509_get_signature_info (not the signature's OID) also names the hash of an RSA-PSS signature.
        var digestNID: Int32 = 0, keyNID: Int32 = 0, bits: Int32 = 0
        var flags: UInt32 = 0
        guard X509_get_signature_info(certificate, &digestNID, &keyNID, &bits, &flags) == 1, digestNID != NID_undef else { return nil }
        if digestNID == NID_md5 || digestNID == NID_sha1 { digestNID = NID_sha256 }
        guard let name = OBJ_nid2sn(digestNID), let md = EVP_get_digestbyname(name) else { return nil }
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(certificate, md, &out, &length) == 1 else { return nil }
        return Array(out.prefix(Int(length)))
    }

    /// A client context. With `caFile`, the server's certificate must chain to it (and, when a host name
    /// is given to the stream, name that host); without, the channel is encrypted but the server unverified
    /// (libpq's `sslmode=require`).
    public init(caFile: String?) throws {
        ERR_clear_error()
        guard let c = SSL_CTX_new(TLS_client_method()) else { throw TLSError.fromQueue("cannot create a TLS context") }
        context = c
        isServer = false
        cutover_ssl_ctx_configure(c)
        if let caFile {
            guard SSL_CTX_load_verify_locations(c, caFile, nil) == 1 else {
                throw TLSError.fromQueue("cannot load the CA certificates \(caFile)")
            }
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nil)
        }
    }

    deinit { SSL_CTX_free(context) }
}

/// One TLS connection's state machine over two memory buffers: `receive` takes what the socket delivered
/// and hands out plaintext; `send` takes plaintext; after either, `takeOutput` gives what must go to the
/// socket (records and handshake messages, in order). Not thread-safe: one event loop drives it.
public final class TLSStream {
    private let ssl: OpaquePointer
    /// What the peer sent (written by `receive`, read by OpenSSL).
    private var input: OpaquePointer
    /// What to send to the peer (written by OpenSSL, read by `takeOutput`).
    private var output: OpaquePointer
    /// Plaintext sent before the handshake finished (a client's first message), written once it has.
    private var early: [UInt8] = []
    /// The peer sent close_notify: nothing more will come.
    public private(set) var peerClosed = false
    /// We queued our close_notify: nothing more is sent, and what still arrives is not delivered.
    private var shutDown = false
    public var isClosed: Bool { peerClosed || shutDown }
    /// The memory buffers may have grown past `keptCapacity` (the handshake, or a large read or write since
    /// they were last replaced): only then is it worth asking OpenSSL (see `compact`).
    private var mayHoldLargeBuffers = true

    /// Largest plaintext record TLS carries: the unit `receive` decrypts into.
    static let recordSize = 16 * 1024
    /// How much is fed to OpenSSL at a time, each way: about a record, so neither memory buffer grows past it.
    static let sliceSize = 16 * 1024

    /// `serverName`, for a client, is what the certificate must name when the context verifies (a DNS name,
    /// also sent as SNI, or an IP address, matched against the certificate's IP entries).
    public init(context: TLSContext, serverName: String? = nil) throws {
        ERR_clear_error()
        guard let s = SSL_new(context.context) else { throw TLSError.fromQueue("cannot create a TLS connection") }
        guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else {
            SSL_free(s)
            throw TLSError.fromQueue("cannot create TLS buffers")
        }
        ssl = s; input = r; output = w
        SSL_set_bio(s, r, w) // the connection owns both buffers from here
        if context.isServer {
            SSL_set_accept_state(s)
        } else {
            SSL_set_connect_state(s)
            if let serverName {
                // Failing to set the name to check must not leave verify-full checking no name at all.
                let isIP = IPAddress.isLiteral(serverName)
                let set = isIP ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), serverName) : SSL_set1_host(s, serverName)
                guard set == 1 else {
                    SSL_free(s)
                    throw TLSError.fromQueue("cannot check the server's certificate for \(serverName)")
                }
                if !isIP { _ = cutover_ssl_set_host_name(s, serverName) } // SNI carries names only
            }
        }
    }

    deinit { SSL_free(ssl) }

    /// Whether the handshake chose the ALPN protocol "postgresql" (required of a direct TLS connection).
    public var negotiatedPostgresALPN: Bool { cutover_ssl_alpn_is_postgresql(ssl) == 1 }

    /// Whether the handshake has finished.
    public var isEstablished: Bool { SSL_is_init_finished(ssl) == 1 }
    /// The negotiated protocol and cipher (for logs and the admin console), once established.
    public var protocolVersion: String? { isEstablished ? SSL_get_version(ssl).map { String(cString: $0) } : nil }
    public var cipher: String? { isEstablished ? cutover_ssl_cipher_name(ssl).map { String(cString: $0) } : nil }

    /// The server's channel binding data as a client sees it (its certificate's `tls-server-end-point` hash),
    /// once established.
    public var peerEndPoint: [UInt8]? { isEstablished ? TLSContext.endPoint(of: SSL_get0_peer_certificate(ssl)) : nil }

    /// On a server, the client certificate's subject common name, once the handshake is done and only if
    /// the certificate verified against the context's client CAs; nil without one (or with a CN that is
    /// missing, repeated, or holds a NUL byte).
    public var verifiedPeerCommonName: String? {
        guard isEstablished else { return nil }
        var buffer = [CChar](repeating: 0, count: 256)
        guard cutover_ssl_peer_common_name(ssl, &buffer, Int32(buffer.count)) >= 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Starts a client's handshake (its ClientHello is then in the output).
    public func start() throws {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc != 1 { try check(rc, "TLS handshake failed") }
    }

    /// Bytes from the socket. Plaintext goes to `deliver` as it is decrypted (valid only during the call).
    /// Returns false once the peer has closed the TLS session (close_notify). Throws on a broken or
    /// refused handshake or a corrupt record; the output may then hold an alert worth sending.
    public func receive(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void) throws -> Bool {
        guard !peerClosed else { return false }
        if bytes.count > Self.keptCapacity / 2 { mayHoldLargeBuffers = true }
        let plain = Self.takeRecordBuffer()
        defer { Self.returnRecordBuffer(plain) }
        // Once per call, not per SSL call: our calls leave the queue empty (errors are drained into the
        // TLSError), and clearing it walks OpenSSL's thread state (measured: ~390 instructions a call).
        ERR_clear_error()
        // About a record at a time into the input buffer: it keeps its largest size (see `compact`).
        var offset = 0
        repeat {
            let n = BIO_write(input, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, Self.sliceSize)))
            guard n > 0 else { throw TLSError.fromQueue("cannot buffer TLS input") }
            offset += Int(n)
            guard try decrypt(into: plain, deliver: deliver) else { return false }
            if shutDown { return true } // we are closing: the rest is not read
        } while offset < bytes.count
        compactIfLarge() // (when there is output, `takeOutput` does it once that is gone)
        return true
    }

    /// Reads what the input holds: false once the peer's close_notify has come.
    private func decrypt(into plain: UnsafeMutableRawPointer, deliver: (UnsafeRawBufferPointer) -> Void) throws -> Bool {
        while true {
            let n = SSL_read(ssl, plain, Int32(Self.recordSize))
            if n > 0 {
                try writeEarly()
                deliver(UnsafeRawBufferPointer(start: plain, count: Int(n)))
                if shutDown || peerClosed { return !peerClosed }
                // Nothing buffered on either side of OpenSSL: another SSL_read would only say "want read".
                if BIO_ctrl_pending(input) == 0 && SSL_pending(ssl) == 0 { return true }
                continue
            }
            switch SSL_get_error(ssl, n) {
            case SSL_ERROR_WANT_READ:
                try writeEarly() // the handshake may have just finished
                return true
            case SSL_ERROR_ZERO_RETURN:
                peerClosed = true
                return false
            default:
                try check(n, isEstablished ? "TLS read failed" : "TLS handshake failed")
                return !peerClosed
            }
        }
    }

    /// Encrypts `bytes` (queued until the handshake has finished; a client's first send starts it); the
    /// output waits for `takeOutput`.
    public func send(_ bytes: UnsafeRawBufferPointer) throws { try send(bytes, handingOut: false) { _ in } }

    /// Encrypts `bytes` and hands the output to `output` after each slice of about a record, so the output
    /// buffer stays small for a large write.
    public func send(_ bytes: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) -> Void) throws {
        try send(bytes, handingOut: true, output)
    }

    private func send(_ bytes: UnsafeRawBufferPointer, handingOut: Bool, _ output: (UnsafeRawBufferPointer) -> Void) throws {
        guard !shutDown, bytes.count > 0 else { return }
        if bytes.count > Self.keptCapacity / 2 { mayHoldLargeBuffers = true }
        if !isEstablished || !early.isEmpty {
            early.append(contentsOf: bytes)
            if !isEstablished { try start() }
            try writeEarly()
        } else {
            var offset = 0
            while offset < bytes.count {
                let n = min(bytes.count - offset, Self.sliceSize)
                try write(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))
                offset += n
                if handingOut && offset < bytes.count { takeOutput(output, compacting: false) } // not per slice
            }
        }
        if handingOut { takeOutput(output) }
    }

    /// Queues a close_notify (the output then holds it). What arrives afterwards is not delivered.
    public func close() {
        guard !shutDown else { return }
        shutDown = true
        ERR_clear_error()
        if isEstablished { _ = SSL_shutdown(ssl) }
    }

    /// Hands what must go to the socket to `body` (in place, valid only during the call) and forgets it.
    /// The caller takes all of it: a connection copies what its socket refuses into its own queue.
    public func takeOutput(_ body: (UnsafeRawBufferPointer) -> Void) { takeOutput(body, compacting: true) }

    private func takeOutput(_ body: (UnsafeRawBufferPointer) -> Void, compacting: Bool) {
        var data: UnsafeMutablePointer<CChar>?
        let count = cutover_bio_mem_data(output, &data)
        guard count > 0, let data else { return }
        body(UnsafeRawBufferPointer(start: data, count: count))
        _ = cutover_bio_reset(output)
        if compacting { compactIfLarge() }
    }

    private func compactIfLarge() {
        if mayHoldLargeBuffers && isEstablished { compact() }
    }

    /// What both memory buffers hold allocated (for tests).
    var bufferCapacity: Int { cutover_bio_mem_capacity(input) + cutover_bio_mem_capacity(output) }

    /// Memory-buffer capacity an idle connection may keep.
    static let keptCapacity = 4096

    /// A memory buffer keeps the capacity of the most it ever held (and zeroes all of it on every reset), so
    /// after the handshake (certificates) or a large transfer an idle connection would keep up to a slice
    /// in each. Whenever both are empty and one is large (and once after the handshake), they are replaced
    /// by fresh ones (SSL_set_bio frees the old pair).
    private func compact() {
        guard BIO_ctrl_pending(input) == 0, BIO_ctrl_pending(output) == 0,
              let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else { return }
        SSL_set_bio(ssl, r, w)
        input = r
        output = w
        mayHoldLargeBuffers = false
    }

    /// Buffers `receive` decrypts into, reused: one per receive in progress (a delivery can start another
    /// connection's receive), instead of an allocation per read. Only the event loop's thread uses streams.
    nonisolated(unsafe) private static var recordBuffers: [UnsafeMutableRawPointer] = []

    private static func takeRecordBuffer() -> UnsafeMutableRawPointer {
        recordBuffers.popLast() ?? UnsafeMutableRawPointer.allocate(byteCount: recordSize, alignment: 16)
    }

    private static func returnRecordBuffer(_ buffer: UnsafeMutableRawPointer) {
        if recordBuffers.count < 4 { recordBuffers.append(buffer) } else { buffer.deallocate() }
    }

    private func writeEarly() throws {
        guard !early.isEmpty, isEstablished else { return }
        let queued = early
        early = []
        try queued.withUnsafeBytes { try write($0) }
    }

    private func write(_ bytes: UnsafeRawBufferPointer) throws {
        // A memory output never fills, so without partial writes SSL_write takes everything at once.
        var offset = 0
        ERR_clear_error()
        while offset < bytes.count {
            let n = SSL_write(ssl, bytes.baseAddress! + offset, Int32(min(bytes.count - offset, 1 << 30)))
            if n <= 0 { try check(n, "TLS write failed"); return }
            offset += Int(n)
        }
    }

    /// Throws unless the result of an SSL call only means "feed me more".
    private func check(_ rc: Int32, _ what: String) throws {
        let e = SSL_get_error(ssl, rc)
        if e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE { return }
        if e == SSL_ERROR_ZERO_RETURN { peerClosed = true; return }
        throw TLSError.fromQueue(what)
    }
}
