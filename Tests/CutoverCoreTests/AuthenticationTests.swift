// SCRAM-SHA-256 and md5 against published vectors and each other.
import Testing
@testable import CutoverCore

@Suite struct SCRAMTests {
    // RFC 7677 section 3.
    let salt = Crypto.fromBase64("W22ZaJ0SNY7soEsUEjb6gQ==")!
    let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

    @Test func rfc7677ServerSide() throws {
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "pencil", salt: salt, iterations: 4096), serverNonce: serverNonce)
        let first = try server.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: Array("n,,n=user,r=rOprNGfwEbeRWgbNEkqO".utf8))
        #expect(String(decoding: first, as: UTF8.self)
            == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        let final = try server.receiveClientFinal(data: Array(
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".utf8))
        #expect(String(decoding: final, as: UTF8.self) == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    }

    @Test func clientAndServerAgreeAndWrongPasswordFails() throws {
        for (clientPassword, ok) in [("s3cret", true), ("wrong", false)] {
            var server = SCRAMServer(verifier: SCRAMVerifier(password: "s3cret"))
            var client = SCRAMClient(password: clientPassword)
            let serverFirst = try server.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: client.clientFirst())
            let clientFinal = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword(clientPassword, salt: $0, iterations: $1) }
            if ok {
                let serverFinal = try server.receiveClientFinal(data: clientFinal)
                try client.verifyServerFinal(serverFinal)
            } else {
                #expect(throws: SCRAMServer.Failure.wrongProof) { try server.receiveClientFinal(data: clientFinal) }
            }
        }
    }

    @Test func channelBindingBindsTheLoginToTheTLSChannelAndRefusesDowngrades() throws {
        let endPoint = Crypto.sha256(Array("our certificate".utf8))
        #expect(SCRAMServer.mechanisms(channelBinding: endPoint) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        #expect(SCRAMServer.mechanisms(channelBinding: nil) == ["SCRAM-SHA-256"])
        func login(clientSees: [UInt8]?, serverHas: [UInt8]?, mechanism: String? = nil) throws {
            var server = SCRAMServer(verifier: SCRAMVerifier(password: "pw"), channelBinding: serverHas)
            var client = SCRAMClient(password: "pw", channelBinding: clientSees)
            #expect(client.mechanism == (clientSees == nil ? "SCRAM-SHA-256" : "SCRAM-SHA-256-PLUS"))
            let serverFirst = try server.receiveClientFirst(mechanism: mechanism ?? client.mechanism, data: client.clientFirst())
            let clientFinal = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword("pw", salt: $0, iterations: $1) }
            try client.verifyServerFinal(try server.receiveClientFinal(data: clientFinal))
        }
        try login(clientSees: endPoint, serverHas: endPoint)
        try login(clientSees: nil, serverHas: endPoint) // "n,,": a client that does not bind may still log in
        // A relay between client and proxy terminates TLS with another certificate: the client binds to that one.
        #expect(throws: SCRAMServer.Failure.channelBindingMismatch) {
            try login(clientSees: Crypto.sha256(Array("a relay's certificate".utf8)), serverHas: endPoint)
        }
        #expect(throws: SCRAMServer.Failure.channelBindingUnsupported) { try login(clientSees: endPoint, serverHas: nil) }
        #expect(throws: SCRAMServer.Failure.channelBindingNegotiation) {
            try login(clientSees: endPoint, serverHas: endPoint, mechanism: "SCRAM-SHA-256") // p= without PLUS
        }
        // "y": the client supports binding but believes the server does not, while PLUS was offered (a stripped offer).
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "pw"), channelBinding: endPoint)
        #expect(throws: SCRAMServer.Failure.channelBindingNegotiation) {
            try server.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: Array("y,,n=,r=abc".utf8))
        }
        var noTLS = SCRAMServer(verifier: SCRAMVerifier(password: "pw"))
        #expect(try noTLS.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: Array("y,,n=,r=abc".utf8)).count > 0)
    }

    @Test func aChannelBindingAppendedAfterTheProofIsRefusedAndTheMessagesAreParsedStrictly() throws {
        // A relay with its own certificate: the client binds to the relay's channel and signs that; the relay
        // appends the binding to ours after the proof. The proof signs only what precedes it, so a lenient
        // parser that took the last c= would accept it.
        let ours = Crypto.sha256(Array("our certificate".utf8)), relays = Crypto.sha256(Array("a relay's certificate".utf8))
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "pw"), channelBinding: ours)
        var client = SCRAMClient(password: "pw", channelBinding: relays)
        let serverFirst = try server.receiveClientFirst(mechanism: client.mechanism, data: client.clientFirst())
        let signed = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword("pw", salt: $0, iterations: $1) }
        let forged = signed + Array(",c=\(Crypto.base64(Array("p=tls-server-end-point,,".utf8) + ours))".utf8)
        #expect(throws: SCRAMServer.Failure.malformed("client-final-message")) { try server.receiveClientFinal(data: forged) }
        #expect(throws: SCRAMServer.Failure.channelBindingMismatch) { try server.receiveClientFinal(data: signed) }

        // Client-first: an authorization identity, a mandatory extension, a missing nonce are refused.
        for bad in ["n,a=admin,n=,r=abc", "n,,m=ext,n=,r=abc", "n,,n=,x=abc", "n,,n=,r="] {
            var s = SCRAMServer(verifier: SCRAMVerifier(password: "pw"))
            #expect(throws: SCRAMServer.Failure.self, "\(bad)") { try s.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: Array(bad.utf8)) }
        }
        // Client-final: a repeated attribute or one out of order is refused before the proof is checked.
        var plain = SCRAMServer(verifier: SCRAMVerifier(password: "pw"))
        let first = try plain.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: Array("n,,n=,r=abc".utf8))
        let nonce = String(String(decoding: first, as: UTF8.self).split(separator: ",")[0].dropFirst(2))
        let proof = Crypto.base64([UInt8](repeating: 1, count: 32))
        for bad in ["r=\(nonce),c=biws,p=\(proof)", "c=biws,r=\(nonce),p=\(proof),p=\(proof)", "c=biws,r=\(nonce),r=\(nonce),p=\(proof)",
                    "c=biws,r=\(nonce)", "c=biws,r=\(nonce),p=\(proof),x=1"] {
            #expect(throws: SCRAMServer.Failure.malformed("client-final-message"), "\(bad)") { try plain.receiveClientFinal(data: Array(bad.utf8)) }
        }
        #expect(throws: SCRAMServer.Failure.wrongProof, "an extension before the proof is allowed (and signed)") {
            try plain.receiveClientFinal(data: Array("c=biws,r=\(nonce),x=1,p=\(proof)".utf8))
        }
    }

    @Test func clientRejectsForgedServerSignature() throws {
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "other"))
        var client = SCRAMClient(password: "s3cret")
        let serverFirst = try server.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: client.clientFirst())
        _ = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword("s3cret", salt: $0, iterations: $1) }
        #expect(throws: SCRAMClient.Failure.serverSignatureMismatch) { try client.verifyServerFinal(Array("v=AAAA".utf8)) }
    }

    @Test func aServerAskingForTooManyIterationsIsRefusedBeforeAnyDerivation() throws {
        var client = SCRAMClient(password: "s3cret")
        _ = client.clientFirst()
        let nonce = String(decoding: client.clientFirst(), as: UTF8.self).components(separatedBy: "r=").last ?? ""
        for iterations in ["4294967296", "10000000"] {
            var c = client
            let serverFirst = Array("r=\(nonce)server,s=\(Crypto.base64(salt)),i=\(iterations)".utf8)
            var derived = false
            #expect(throws: SCRAMClient.Failure.iterationsTooHigh(Int(iterations)!)) {
                _ = try c.clientFinal(serverFirst: serverFirst) { _, _ in derived = true; return [] }
            }
            #expect(!derived, "no key derived for \(iterations) iterations")
        }
    }

    @Test func md5ResponsesAreComparedWhole() {
        let stored = MD5Password.stored(user: "alice", password: "secret")
        let right = MD5Password.response(stored: stored, salt: [1, 2, 3, 4])
        #expect(MD5Password.matches(right, stored: stored, salt: [1, 2, 3, 4]))
        #expect(!MD5Password.matches(String(right.dropLast()), stored: stored, salt: [1, 2, 3, 4]))
        #expect(!MD5Password.matches(right + "0", stored: stored, salt: [1, 2, 3, 4]))
        #expect(!MD5Password.matches(String(right.dropLast()) + "x", stored: stored, salt: [1, 2, 3, 4]))
        #expect(!MD5Password.matches(right, stored: stored, salt: [1, 2, 3, 5]))
    }

    @Test func verifierParsesPostgresFormatAndMatchesDerivation() {
        let derived = SCRAMVerifier(password: "pencil", salt: salt, iterations: 4096)
        let text = "SCRAM-SHA-256$4096:\(Crypto.base64(salt))$\(Crypto.base64(derived.storedKey)):\(Crypto.base64(derived.serverKey))"
        #expect(SCRAMVerifier(parsing: text) == derived)
        #expect(SCRAMVerifier(parsing: "md5abc") == nil)
        #expect(SCRAMVerifier(parsing: "SCRAM-SHA-256$x:AAAA$AAAA:AAAA") == nil)
    }

    @Test func md5MatchesPostgres() {
        // SELECT 'md5' || md5('secret' || 'alice') in PostgreSQL.
        #expect(MD5Password.stored(user: "alice", password: "secret") == "md5" + Crypto.md5Hex(Array("secretalice".utf8)))
        #expect(Crypto.md5Hex(Array("abc".utf8)) == "900150983cd24fb0d6963f7d28e17f72")
        let r = MD5Password.response(stored: "md5" + Crypto.md5Hex(Array("secretalice".utf8)), salt: [1, 2, 3, 4])
        #expect(r.hasPrefix("md5") && r.count == 35)
    }
}
