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

    @Test func clientRejectsForgedServerSignature() throws {
        var server = SCRAMServer(verifier: SCRAMVerifier(password: "other"))
        var client = SCRAMClient(password: "s3cret")
        let serverFirst = try server.receiveClientFirst(mechanism: "SCRAM-SHA-256", data: client.clientFirst())
        _ = try client.clientFinal(serverFirst: serverFirst) { SCRAMClient.saltedPassword("s3cret", salt: $0, iterations: $1) }
        #expect(throws: SCRAMClient.Failure.serverSignatureMismatch) { try client.verifyServerFinal(Array("v=AAAA".utf8)) }
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
