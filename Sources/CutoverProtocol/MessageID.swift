// The one-byte identifiers of typed messages, per direction.

/// Messages the backend (or the proxy acting as one) sends.
public enum BackendMessageID: UInt8, Sendable {
    case authentication = 0x52        // ascii: R
    case backendKeyData = 0x4B        // ascii: K
    case bindComplete = 0x32          // ascii: 2
    case closeComplete = 0x33         // ascii: 3
    case commandComplete = 0x43       // ascii: C
    case copyData = 0x64              // ascii: d
    case copyDone = 0x63              // ascii: c
    case copyInResponse = 0x47        // ascii: G
    case copyOutResponse = 0x48       // ascii: H
    case copyBothResponse = 0x57      // ascii: W
    case dataRow = 0x44               // ascii: D
    case emptyQueryResponse = 0x49    // ascii: I
    case errorResponse = 0x45         // ascii: E
    case functionCallResponse = 0x56  // ascii: V
    case negotiateProtocolVersion = 0x76 // ascii: v
    case noData = 0x6E                // ascii: n
    case noticeResponse = 0x4E        // ascii: N
    case notificationResponse = 0x41  // ascii: A
    case parameterDescription = 0x74  // ascii: t
    case parameterStatus = 0x53       // ascii: S
    case parseComplete = 0x31         // ascii: 1
    case portalSuspended = 0x73       // ascii: s
    case readyForQuery = 0x5A         // ascii: Z
    case rowDescription = 0x54        // ascii: T
}

/// Messages the client (or the proxy acting as one) sends after the startup packet.
public enum FrontendMessageID: UInt8, Sendable {
    case bind = 0x42                  // ascii: B
    case close = 0x43                 // ascii: C
    case copyData = 0x64              // ascii: d
    case copyDone = 0x63              // ascii: c
    case copyFail = 0x66              // ascii: f
    case describe = 0x44              // ascii: D
    case execute = 0x45               // ascii: E
    case flush = 0x48                 // ascii: H
    case functionCall = 0x46          // ascii: F
    case parse = 0x50                 // ascii: P
    case password = 0x70              // ascii: p (also SASLInitialResponse, SASLResponse, GSSResponse)
    case query = 0x51                 // ascii: Q
    case sync = 0x53                  // ascii: S
    case terminate = 0x58             // ascii: X
}
