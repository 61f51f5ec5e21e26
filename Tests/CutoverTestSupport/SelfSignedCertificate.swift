// Test support shared by the test targets: throwaway TLS certificates.
import Foundation

public struct CertificateError: Error { public let status: Int32 }

/// A throwaway self-signed certificate for localhost and 127.0.0.1, with its key, from the openssl command.
public struct SelfSignedCertificate: Sendable {
    public let directory: String
    public var certificate: String { directory + "/server.crt" }
    public var key: String { directory + "/server.key" }

    public init(commonName: String = "localhost") throws {
        directory = NSTemporaryDirectory() + "cutover-tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                       "-keyout", key, "-out", certificate, "-days", "2", "-subj", "/CN=\(commonName)",
                       "-addext", "subjectAltName=DNS:\(commonName),IP:127.0.0.1"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CertificateError(status: p.terminationStatus) }
    }

    public func remove() { try? FileManager.default.removeItem(atPath: directory) }
}
