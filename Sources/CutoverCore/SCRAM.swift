// SCRAM-SHA-256 (RFC 5802/7677) in both roles: the proxy as server to clients and as client to backends.

/// The keys a server keeps for a user: what PostgreSQL stores in `pg_authid.rolpassword`.
public struct SCRAMVerifier: Equatable, Sendable {
    public var iterations: Int
    public var salt: [UInt8]
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    /// Derives a verifier from a plaintext password (random salt, PostgreSQL's default 4096 iterations).
    public init(password: String, salt: [UInt8] = Crypto.randomBytes(16), iterations: Int = 4096) {
        let salted = SCRAMClient.saltedPassword(password, salt: salt, iterations: iterations)
        let clientKey = Crypto.hmacSHA256(key: salted, Array("Client Key".utf8))
        self.iterations = iterations
        self.salt = salt
        storedKey = Crypto.sha256(clientKey)
        serverKey = Crypto.hmacSHA256(key: salted, Array("Server Key".utf8))
    }

    init(iterations: Int, salt: [UInt8], storedKey: [UInt8], serverKey: [UInt8]) {
        self.iterations = iterations; self.salt = salt; self.storedKey = storedKey; self.serverKey = serverKey
    }

    /// For a user the proxy does not know, as PostgreSQL's mock authentication: salt and keys derived from
    /// the name and a per-process secret, so the same unknown name gets the same salt each time (as a real
    /// user does), no key derivation runs (a probe costs the loop no PBKDF2, and takes as long as a real
    /// user's attempt), and the keys match no password.
    public static func mock(user: String, secret: [UInt8] = mockSecret) -> SCRAMVerifier {
        func derive(_ label: String) -> [UInt8] { Crypto.hmacSHA256(key: secret, Array("\(label):\(user)".utf8)) }
        return SCRAMVerifier(iterations: 4096, salt: Array(derive("salt").prefix(16)), storedKey: derive("stored"), serverKey: derive("server"))
    }

    /// The mock verifiers' secret: random per process.
    public static let mockSecret = Crypto.randomBytes(32)

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (PostgreSQL's format).
    public init?(parsing text: String) {
        let parts = text.split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "SCRAM-SHA-256" else { return nil }
        let iterSalt = parts[1].split(separator: ":"), keys = parts[2].split(separator: ":")
        guard iterSalt.count == 2, keys.count == 2, let iter = Int(iterSalt[0]), iter > 0,
              let salt = Crypto.fromBase64(iterSalt[1]), let stored = Crypto.fromBase64(keys[0]),
              let server = Crypto.fromBase64(keys[1]), stored.count == 32, server.count == 32 else { return nil }
        iterations = iter; self.salt = salt; storedKey = stored; serverKey = server
    }
}

/// Parses `k=v,k=v` SCRAM attribute lists.
private func attributes(_ s: String) -> [Character: String] {
    var out: [Character: String] = [:]
    for part in s.split(separator: ",", omittingEmptySubsequences: false) {
        guard let eq = part.firstIndex(of: "="), eq == part.index(after: part.startIndex) else { continue }
        out[part.first!] = String(part[part.index(after: eq)...])
    }
    return out
}

/// The SCRAM mechanism names and the one channel binding type PostgreSQL defines.
public enum SCRAMMechanism {
    public static let plain = "SCRAM-SHA-256"
    public static let plus = "SCRAM-SHA-256-PLUS"
    public static let bindingType = "tls-server-end-point"
}

/// The proxy's side of SCRAM when a client logs in to it. A pure state machine: bytes in, bytes out.
public struct SCRAMServer: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case malformed(String)
        case unsupportedMechanism(String)
        case channelBindingUnsupported
        /// The client's flags contradict what was offered (RFC 5802: "y" while PLUS was offered is a downgrade).
        case channelBindingNegotiation
        /// The client bound to a different TLS channel than ours (a man in the middle, or another certificate).
        case channelBindingMismatch
        case wrongProof
    }

    let verifier: SCRAMVerifier
    let serverNonce: String
    /// Our `tls-server-end-point` data when the client is on TLS (then SCRAM-SHA-256-PLUS is offered).
    let channelBinding: [UInt8]?
    private var clientFirstBare = ""
    private var serverFirst = ""
    private var combinedNonce = ""
    private var gs2Header = ""
    private var bound = false

    public init(verifier: SCRAMVerifier, serverNonce: String = Crypto.base64(Crypto.randomBytes(18)), channelBinding: [UInt8]? = nil) {
        self.verifier = verifier
        self.serverNonce = serverNonce
        self.channelBinding = channelBinding
    }

    /// What AuthenticationSASL offers.
    public static func mechanisms(channelBinding: [UInt8]?) -> [String] {
        channelBinding == nil ? [SCRAMMechanism.plain] : [SCRAMMechanism.plus, SCRAMMechanism.plain]
    }

    /// Handles SASLInitialResponse; returns the server-first-message for AuthenticationSASLContinue.
    public mutating func receiveClientFirst(mechanism: String, data: [UInt8]) throws(Failure) -> [UInt8] {
        let text = String(decoding: data, as: UTF8.self)
        // gs2-header: "n," (no channel binding), "y," (client supports it, thinks we do not), or
        // "p=tls-server-end-point," (bound, only with the PLUS mechanism); then an authzid (empty) and ",".
        switch mechanism {
        case SCRAMMechanism.plus:
            guard channelBinding != nil else { throw .channelBindingUnsupported }
            guard text.hasPrefix("p=") else { throw .channelBindingNegotiation }
            guard text.hasPrefix("p=\(SCRAMMechanism.bindingType),") else { throw .malformed("unsupported channel binding type") }
            bound = true
        case SCRAMMechanism.plain:
            if text.hasPrefix("p=") { throw .channelBindingNegotiation }
            if text.hasPrefix("y,") && channelBinding != nil { throw .channelBindingNegotiation }
            guard text.hasPrefix("n,") || text.hasPrefix("y,") else { throw .malformed("gs2 header") }
        default:
            throw .unsupportedMechanism(mechanism)
        }
        guard let flagEnd = text.firstIndex(of: ",") else { throw .malformed("gs2 header") }
        let afterFlag = text[text.index(after: flagEnd)...]
        guard let comma = afterFlag.firstIndex(of: ",") else { throw .malformed("gs2 header") }
        // As PostgreSQL: no authorization identity, and client-first-bare is `n=<user>,r=<nonce>[,extension]…`
        // in that order (a mandatory extension `m=` first is refused: none is supported).
        guard afterFlag.startIndex == comma else { throw .malformed("an authorization identity is not supported") }
        gs2Header = String(text[text.startIndex...comma])
        clientFirstBare = String(afterFlag[afterFlag.index(after: comma)...])
        let bare = clientFirstBare.split(separator: ",", omittingEmptySubsequences: false)
        guard bare.count >= 2, bare[0].hasPrefix("n="), bare[1].hasPrefix("r="), bare[1].count > 2 else { throw .malformed("client-first-message") }
        let clientNonce = String(bare[1].dropFirst(2))
        combinedNonce = clientNonce + serverNonce
        serverFirst = "r=\(combinedNonce),s=\(Crypto.base64(verifier.salt)),i=\(verifier.iterations)"
        return Array(serverFirst.utf8)
    }

    /// Handles the client-final-message; returns the server-final-message for AuthenticationSASLFinal.
    ///
    /// Parsed strictly, as PostgreSQL does: `c=…,r=…[,extension]…,p=…` with the proof last and no attribute
    /// repeated. What the proof signs is everything before it, so a `c=` slipped in after the proof (by a
    /// relay, to swap the channel binding the client signed for ours) must not be what is checked.
    public func receiveClientFinal(data: [UInt8]) throws(Failure) -> [UInt8] {
        let text = String(decoding: data, as: UTF8.self)
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[0].hasPrefix("c="), parts[1].hasPrefix("r="), let last = parts.last, last.hasPrefix("p="),
              !parts.dropFirst(2).dropLast().contains(where: { $0.hasPrefix("c=") || $0.hasPrefix("r=") || $0.hasPrefix("p=") })
        else { throw .malformed("client-final-message") }
        let withoutProof = parts.dropLast().joined(separator: ",")
        let expected = Array(gs2Header.utf8) + (bound ? channelBinding ?? [] : [])
        guard parts[0].dropFirst(2) == Crypto.base64(expected) else { throw bound ? .channelBindingMismatch : .malformed("channel binding data") }
        guard parts[1].dropFirst(2) == combinedNonce else { throw .malformed("nonce mismatch") }
        guard let proof = Crypto.fromBase64(String(last.dropFirst(2))), proof.count == 32 else { throw .malformed("client proof") }
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let signature = Crypto.hmacSHA256(key: verifier.storedKey, authMessage)
        let clientKey = zip(proof, signature).map { $0 ^ $1 }
        guard Crypto.equal(Crypto.sha256(clientKey), verifier.storedKey) else { throw .wrongProof }
        let serverSignature = Crypto.hmacSHA256(key: verifier.serverKey, authMessage)
        return Array("v=\(Crypto.base64(serverSignature))".utf8)
    }
}

/// The proxy's side of SCRAM when it logs in to a backend with the backend's configured password.
public struct SCRAMClient: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case malformed(String)
        case serverSignatureMismatch
        case iterationsTooLow(Int)
        /// More iterations than `maximumIterations`: deriving the key would hold the event loop (10 M took
        /// 2.7 s) or overflow (2^32 trapped), and a server asking for that many is not to be trusted.
        case iterationsTooHigh(Int)
    }

    /// The most iterations a server may ask for (PostgreSQL's default is 4 096).
    public static let maximumIterations = 1_000_000

    let password: String
    let clientNonce: String
    /// The server's `tls-server-end-point` data when binding (the mechanism is then SCRAM-SHA-256-PLUS).
    let channelBinding: [UInt8]?
    private var clientFirstBare = ""
    private var expectedServerSignature: [UInt8] = []

    public init(password: String, clientNonce: String = Crypto.base64(Crypto.randomBytes(18)), channelBinding: [UInt8]? = nil) {
        self.password = password
        self.clientNonce = clientNonce
        self.channelBinding = channelBinding
    }

    /// The mechanism to name in SASLInitialResponse.
    public var mechanism: String { channelBinding == nil ? SCRAMMechanism.plain : SCRAMMechanism.plus }
    private var gs2Header: String { channelBinding == nil ? "n,," : "p=\(SCRAMMechanism.bindingType),," }

    /// The SASLInitialResponse payload. The user name is empty: PostgreSQL takes it from the startup packet.
    public mutating func clientFirst() -> [UInt8] {
        clientFirstBare = "n=,r=\(clientNonce)"
        return Array("\(gs2Header)\(clientFirstBare)".utf8)
    }

    /// Answers the server-first-message. `saltedPassword` lets the caller cache PBKDF2 per (salt, iterations).
    public mutating func clientFinal(serverFirst data: [UInt8],
                                     saltedPassword: (_ salt: [UInt8], _ iterations: Int) -> [UInt8]) throws(Failure) -> [UInt8] {
        let serverFirst = String(decoding: data, as: UTF8.self)
        let attrs = attributes(serverFirst)
        guard let nonce = attrs["r"], nonce.hasPrefix(clientNonce), nonce.count > clientNonce.count else { throw .malformed("server nonce") }
        guard let salt = attrs["s"].flatMap({ Crypto.fromBase64($0) }) else { throw .malformed("salt") }
        guard let iterations = attrs["i"].flatMap({ Int($0) }) else { throw .malformed("iteration count") }
        guard iterations >= 1 else { throw .iterationsTooLow(iterations) }
        guard iterations <= Self.maximumIterations else { throw .iterationsTooHigh(iterations) }
        let salted = saltedPassword(salt, iterations)
        let clientKey = Crypto.hmacSHA256(key: salted, Array("Client Key".utf8))
        let storedKey = Crypto.sha256(clientKey)
        let withoutProof = "c=\(Crypto.base64(Array(gs2Header.utf8) + (channelBinding ?? []))),r=\(nonce)"
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let signature = Crypto.hmacSHA256(key: storedKey, authMessage)
        let proof = zip(clientKey, signature).map { $0 ^ $1 }
        let serverKey = Crypto.hmacSHA256(key: salted, Array("Server Key".utf8))
        expectedServerSignature = Crypto.hmacSHA256(key: serverKey, authMessage)
        return Array("\(withoutProof),p=\(Crypto.base64(proof))".utf8)
    }

    /// Checks the server-final-message, so a backend that does not know the password cannot impersonate one.
    public func verifyServerFinal(_ data: [UInt8]) throws(Failure) {
        let text = String(decoding: data, as: UTF8.self)
        guard let v = attributes(text)["v"], let sig = Crypto.fromBase64(v) else { throw .malformed("server final") }
        guard Crypto.equal(sig, expectedServerSignature) else { throw .serverSignatureMismatch }
    }

    /// PBKDF2 of the password after SASLprep, as PostgreSQL derives a SCRAM verifier.
    public static func saltedPassword(_ password: String, salt: [UInt8], iterations: Int) -> [UInt8] {
        Crypto.pbkdf2SHA256(password: Array(SASLprep.prepare(password).utf8), salt: salt, iterations: iterations)
    }
}

/// PostgreSQL's md5 password scheme: `"md5" + md5hex(md5hex(password + user) + salt)`.
public enum MD5Password {
    /// The stored form, `"md5" + md5hex(password + user)`.
    public static func stored(user: String, password: String) -> String {
        "md5" + Crypto.md5Hex(Array((password + user).utf8))
    }

    /// The response to AuthenticationMD5Password, from the stored form.
    public static func response(stored: String, salt: [UInt8]) -> String {
        "md5" + Crypto.md5Hex(Array(stored.dropFirst(3).utf8) + salt)
    }

    /// Whether a client's `response` is the one `stored` expects, compared in constant time (a byte-wise
    /// `==` stops at the first difference, which a client could time).
    public static func matches(_ response: String, stored: String, salt: [UInt8]) -> Bool {
        let expected = Array(self.response(stored: stored, salt: salt).utf8), given = Array(response.utf8)
        var difference = UInt8(truncatingIfNeeded: expected.count ^ given.count)
        for i in 0..<min(expected.count, given.count) { difference |= expected[i] ^ given[i] }
        return difference == 0 && expected.count == given.count
    }
}
