// swift-tools-version:6.0
// Cutover: a PostgreSQL wire-protocol proxy that moves each service's schema to its own instance.
import PackageDescription

/// Release builds skip Swift's dynamic exclusivity checks in the proxy's own modules: measured at about a
/// quarter of the proxy's instructions per query (swift_beginAccess on every class property access on the
/// hot path). Debug builds, and so the tests, keep them.
let hotPathSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release))]

let package = Package(
    name: "Cutover",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "cutover", targets: ["cutover"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        // HDR latency histograms for `cutover bench` (small: it brings only swift-numerics).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C libraries, each behind a module map with a `link` line (pkg-config only adds search paths).
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CPGQuery", providers: [.apt(["libpg-query-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libssl", providers: [.apt(["libssl-dev"])]),

        // Pure wire protocol: messages, framer, encoder. No I/O.
        .target(name: "CutoverProtocol", swiftSettings: hotPathSettings),
        // The C libraries other than libuv behind safe Swift: OpenSSL (SCRAM, md5, TLS), libpg_query, and
        // libpq for the command-line tools (PGSession).
        .target(name: "CutoverNative", dependencies: ["COpenSSL", "CPGQuery", "CLibPQ"]),
        // Pure domain: config, routes, phases, authentication exchanges, session state machines.
        .target(name: "CutoverCore", dependencies: [
            "CutoverProtocol", "CutoverNative",
            .product(name: "TOMLKit", package: "TOMLKit"),
        ], swiftSettings: hotPathSettings),
        // The only layer with unsafe pointers and C callbacks: libuv loop, TCP, timers, signals.
        .target(name: "CutoverRuntime", dependencies: ["CLibUV"], swiftSettings: hotPathSettings),
        // The proxy: glues sessions (core) to sockets (runtime).
        .target(name: "CutoverProxy", dependencies: [
            "CutoverProtocol", "CutoverCore", "CutoverRuntime",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: hotPathSettings),
        // `cutover bench`: a libpq load client with HDR latency histograms (no proxy code in it).
        .target(name: "CutoverBench", dependencies: [
            "CutoverNative",
            .product(name: "Histogram", package: "hdrhistogram-swift"),
        ]),
        .executableTarget(name: "cutover", dependencies: [
            "CutoverProxy", "CutoverCore", "CutoverNative", "CutoverBench",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // What several test targets use (throwaway TLS certificates).
        .target(name: "CutoverTestSupport", path: "Tests/CutoverTestSupport"),
        .testTarget(name: "CutoverProtocolTests", dependencies: ["CutoverProtocol"]),
        .testTarget(name: "CutoverCoreTests", dependencies: ["CutoverCore", "CutoverProtocol", "CutoverTestSupport"]),
        .testTarget(name: "CutoverRuntimeTests", dependencies: ["CutoverRuntime"]),
        .testTarget(name: "CutoverBenchTests", dependencies: ["CutoverBench"]),
        .testTarget(name: "CutoverIntegrationTests", dependencies: ["CLibPQ", "CutoverCore", "CutoverTestSupport"]),
    ]
)
