// Test support: a throwaway certificate authority that issues client certificates (for auth = "cert").
import Foundation

/// A CA made with the openssl command, and the client certificates it issues by common name.
public struct CertificateAuthority: Sendable {
    public let directory: String
    public let name: String
    public var certificate: String { directory + "/ca.crt" }
    var key: String { directory + "/ca.key" }

    public init(name: String = "Cutover test CA") throws {
        self.name = name
        directory = NSTemporaryDirectory() + "cutover-ca-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", key, "-out", certificate, "-days", "2", "-subj", "/CN=\(name)"])
    }

    /// A client certificate for `commonName` signed by this CA: the paths of the certificate and of its key
    /// (mode 0600, which libpq requires of a key file).
    public func issue(commonName: String) throws -> (certificate: String, key: String) {
        let base = directory + "/" + UUID().uuidString
        try Self.openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", base + ".key", "-out", base + ".csr", "-subj", "/CN=\(commonName)"])
        try Self.openssl(["x509", "-req", "-in", base + ".csr", "-CA", certificate, "-CAkey", key, "-CAcreateserial",
                          "-out", base + ".crt", "-days", "2"])
        chmod(base + ".key", 0o600)
        return (base + ".crt", base + ".key")
    }

    /// Writes this CA's certificate revocation list, listing `revoked` (certificate paths), to `path` (PEM).
    public func writeRevocationList(to path: String, revoked: [String] = []) throws {
        // `openssl ca` keeps its revocations in an index file; start one afresh for each list.
        let index = directory + "/index.txt", config = directory + "/ca.cnf"
        try Data().write(to: URL(fileURLWithPath: index))
        try "01\n".write(toFile: directory + "/crlnumber", atomically: true, encoding: .utf8)
        try """
            [ca]
            default_ca = test
            [test]
            database = \(index)
            crlnumber = \(directory)/crlnumber
            default_md = sha256
            default_crl_days = 2
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let ca = ["-config", config, "-keyfile", key, "-cert", certificate]
        for r in revoked { try Self.openssl(["ca"] + ca + ["-revoke", r]) }
        try Self.openssl(["ca"] + ca + ["-gencrl", "-out", path])
    }

    public func remove() { try? FileManager.default.removeItem(atPath: directory) }

    static func openssl(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = arguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CertificateError(status: p.terminationStatus) }
    }
}
