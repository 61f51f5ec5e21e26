// Streaming header scanner for pass-through forwarding: sees every message boundary, copies nothing it need not.

/// Walks a typed message stream chunk by chunk, as it is forwarded, and reports each message that ends in
/// the chunk. Bodies are handed over only for the ids in `captured` (the ones that drive decisions); the
/// rest are skipped by length without being read, so DataRow and CopyData cost one header each.
public struct MessageScanner: Sendable {
    /// A set of message ids. Every PostgreSQL message id is ASCII, so two words cover them; an id of 128 or
    /// more is never a member. Two words, not four, so `contains` is a shift and a conditional move.
    public struct IDSet: Sendable {
        @usableFromInline var low: UInt64 = 0   // ids 0–63
        @usableFromInline var high: UInt64 = 0  // ids 64–127
        public init(_ ids: [UInt8]) { for id in ids { insert(id) } }
        public mutating func insert(_ id: UInt8) {
            precondition(id < 128, "message ids are ASCII")
            if id < 64 { low |= 1 << UInt64(id) } else { high |= 1 << UInt64(id & 63) }
        }
        @inlinable @inline(__always) public func contains(_ id: UInt8) -> Bool {
            guard id < 128 else { return false }
            return ((id < 64 ? low : high) >> UInt64(id & 63)) & 1 != 0
        }
    }

    // Internal and @usableFromInline: `scan` is inlined into its callers so their per-message closure is too.
    public let captured: IDSet
    public let maxMessageSize: Int
    // Ordered largest first and kept narrow: every connection holds a scanner (64 bytes).
    @usableFromInline var bodyRemaining = 0
    @usableFromInline var capture: [UInt8] = []
    @usableFromInline var header: (UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0)
    @usableFromInline var headerFill: UInt8 = 0
    @usableFromInline var currentID: UInt8 = 0
    @usableFromInline var capturing = false

    public init(captured: IDSet, maxMessageSize: Int) {
        self.captured = captured
        self.maxMessageSize = maxMessageSize
    }

    /// True between messages: the stream can be cut or switched here.
    @inlinable public var atMessageBoundary: Bool { headerFill == 0 && bodyRemaining == 0 && !capturing }

    /// Scans `chunk`. `visit(id, body, endOffset)` runs for each message that completes in it; `body` is
    /// non-nil only for captured ids and is valid only during the call; `endOffset` is where the
    /// message ends within `chunk`. A length over `maxMessageSize` (or under 4) throws before its body is read.
    @inlinable @inline(__always) public mutating func scan(_ chunk: UnsafeRawBufferPointer,
                              _ visit: (UInt8, UnsafeRawBufferPointer?, Int) throws -> Void) throws {
        var i = 0
        let n = chunk.count
        guard n > 0, let raw = chunk.baseAddress else { return }
        let base = raw.assumingMemoryBound(to: UInt8.self)
        while i < n {
            if bodyRemaining == 0 && headerFill == 0 && !capturing {
                // Fast path: whole messages, each header read once and each body skipped by its length. The
                // state fields are not touched until a message straddles the chunk's end. Wrapping arithmetic
                // is safe: 5 ≤ length + 1 ≤ Int32.max + 1 and i ≤ n.
                while n &- i >= 5 {
                    let id = base[i]
                    let length = Int(Int32(bigEndian: raw.loadUnaligned(fromByteOffset: i &+ 1, as: Int32.self)))
                    try check(length)
                    let bodyStart = i &+ 5, end = i &+ 1 &+ length
                    guard end <= n else {
                        begin(id: id, length: length)
                        i = bodyStart
                        break
                    }
                    i = end
                    try visit(id, captured.contains(id) ? UnsafeRawBufferPointer(start: raw + bodyStart, count: end &- bodyStart) : nil, end)
                }
                if i >= n || bodyRemaining > 0 || capturing { continue }
            }
            if bodyRemaining == 0 && !capturing {
                // Slow path: the header straddles chunks.
                setHeaderByte(Int(headerFill), chunk[i]); headerFill += 1; i += 1
                if headerFill == 5 {
                    headerFill = 0
                    let length = Int(Int32(bitPattern: UInt32(header.1) << 24 | UInt32(header.2) << 16
                        | UInt32(header.3) << 8 | UInt32(header.4)))
                    try check(length)
                    begin(id: header.0, length: length)
                    if bodyRemaining == 0 { try finish(visit, at: i) }
                }
                continue
            }
            let take = min(bodyRemaining, n - i)
            if capturing { capture.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[i..<i + take])) }
            bodyRemaining -= take
            i += take
            if bodyRemaining == 0 { try finish(visit, at: i) }
        }
    }

    @inlinable @inline(__always) func check(_ length: Int) throws {
        guard length >= 4 else { throw ProtocolError.invalidLength(length) }
        guard length <= maxMessageSize else { throw ProtocolError.messageTooLarge(length: length, limit: maxMessageSize) }
    }

    @usableFromInline mutating func begin(id: UInt8, length: Int) {
        currentID = id
        bodyRemaining = length - 4
        capturing = captured.contains(id)
        if capturing { capture.removeAll(keepingCapacity: true); capture.reserveCapacity(bodyRemaining) }
    }

    @usableFromInline mutating func finish(_ visit: (UInt8, UnsafeRawBufferPointer?, Int) throws -> Void, at offset: Int) throws {
        let wasCapturing = capturing
        capturing = false
        if wasCapturing {
            let body = capture
            capture = []
            try body.withUnsafeBytes { try visit(currentID, $0, offset) }
        } else {
            try visit(currentID, nil, offset)
        }
    }

    @usableFromInline mutating func setHeaderByte(_ i: Int, _ b: UInt8) {
        switch i {
        case 0: header.0 = b
        case 1: header.1 = b
        case 2: header.2 = b
        case 3: header.3 = b
        default: header.4 = b
        }
    }
}

extension BackendMessage {
    /// Decodes a captured body handed over by `MessageScanner`.
    public static func decode(id: UInt8, raw: UnsafeRawBufferPointer) throws -> BackendMessage {
        try decode(id: id, body: Array(raw)[...])
    }
}
