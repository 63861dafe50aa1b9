// swift-tools-version: 6.1
import PackageDescription

/// Executables and test machinery run at release speed in debug builds too. Never on a library
/// product: SwiftPM refuses a dependency by version whose products carry unsafe flags, so the
/// libraries get their speed from their code (the AVX-512 kernels are C functions with a `target`
/// attribute) and the tests run on an optimised build (the README's test command).
let optimizedInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "swraid",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "swraid", targets: ["swraid"]),
        .library(name: "RaidMath", targets: ["RaidMath"]),
        .library(name: "MDFormat", targets: ["MDFormat"]),
        .library(name: "MDOffline", targets: ["MDOffline"]),
        .library(name: "RaidCore", targets: ["RaidCore"]),
        .library(name: "DiskIO", targets: ["DiskIO"]),
        .library(name: "RaidEngine", targets: ["RaidEngine"]),
        .library(name: "NBDServer", targets: ["NBDServer"]),
        .library(name: "ControlPlane", targets: ["ControlPlane"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "ControlProtocol", targets: ["ControlProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
    ],
    targets: [
        // Pure layers: no I/O, no clock, no randomness.
        .target(name: "RaidMath", dependencies: ["CX86Intrinsics", "RaidMathKernels"]),
        // The hot loops in C: parity (baseline, and AVX-512 by per-function `target` attributes,
        // chosen at run time by CPUID), GF(2^8) multiply-add, compares, SHA-256 blocks. No build
        // flags: see the header for why.
        .target(name: "RaidMathKernels"),
        // Header-only: clang's SSE2 intrinsics for non-temporal stores (see shim.h).
        .systemLibrary(name: "CX86Intrinsics"),
        .target(name: "MDFormat"),
        // The array's state machine: owns all state, never blocks, does no I/O (design.md §3).
        .target(
            name: "RaidCore",
            dependencies: ["RaidMath", "MDFormat", .product(name: "DequeModule", package: "swift-collections")]),
        // Seeded scheduler, simulated members, workloads and checkers around the same core.
        .target(
            name: "RaidSimulation",
            dependencies: ["RaidCore", "MDFormat", "RaidMath", "DiskIO"],
            // Test machinery, run millions of times: no dynamic exclusivity checks here (the core
            // keeps them).
            swiftSettings: optimizedInDebug + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]),
        // Member devices behind one protocol (files and block devices, the fault injector), the
        // superblock probe, and every other system call the package makes.
        .target(name: "DiskIO", dependencies: ["MDFormat", "CDiskIO", .product(name: "SystemPackage", package: "swift-system")]),
        // Linux calls Swift's Glibc module does not expose (pwritev2, O_DIRECT, BLKGETSIZE64).
        .target(name: "CDiskIO"),
        // Offline assembly (read-only streaming) and array creation on real members.
        .target(name: "MDOffline", dependencies: ["RaidMath", "RaidMathKernels", "MDFormat", "RaidCore", "DiskIO"]),
        // The NBD wire format: handshake, request validation, replies (pure: no I/O).
        .target(name: "NBDProtocol"),
        // The production shell: the core on an event loop, member I/O on a thread pool.
        .target(
            name: "RaidEngine",
            dependencies: [
                "RaidCore", "MDFormat", "DiskIO", "MDOffline",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]),
        // The control socket's line protocol: requests, replies, framing (pure: no I/O).
        .target(name: "ControlProtocol"),
        // A small blocking NBD client (the demo's, and tests').
        .target(name: "NBDClient", dependencies: ["NBDProtocol", "DiskIO"]),
        // NBD over SwiftNIO: the array served on the engine's own event loop.
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "RaidEngine", "RaidCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]),
        // The control socket (md's attributes and mdadm's verbs over a line protocol) and the
        // reports in /proc/mdstat's and mdadm --detail's formats.
        .target(
            name: "ControlPlane",
            dependencies: [
                "RaidEngine", "RaidCore", "MDFormat", "DiskIO", "ControlProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .executableTarget(
            name: "swraid",
            dependencies: [
                "RaidMath", "MDFormat", "DiskIO", "CDiskIO", "MDOffline", "RaidCore", "RaidSimulation", "RaidEngine", "NBDServer", "NBDProtocol", "NBDClient", "ControlPlane", "ControlProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: optimizedInDebug),
        .target(name: "TestSupport", dependencies: ["MDFormat"], path: "Tests/TestSupport", swiftSettings: optimizedInDebug),
        .testTarget(
            name: "RaidMathTests",
            dependencies: ["RaidMath", "TestSupport", .product(name: "PropertyBased", package: "swift-property-based")]),
        .testTarget(name: "MDFormatTests", dependencies: ["MDFormat", "RaidMath", "TestSupport"]),
        .testTarget(name: "RaidCoreTests", dependencies: ["RaidCore", "MDFormat", "RaidSimulation", "TestSupport"]),
        .testTarget(name: "RaidSimulationTests", dependencies: ["RaidSimulation", "RaidCore", "MDFormat"]),
        .testTarget(name: "MDOfflineTests", dependencies: ["MDOffline", "MDFormat", "DiskIO", "TestSupport"]),
        .testTarget(
            name: "CLITests",
            dependencies: [
                "swraid", "MDOffline", "TestSupport", "RaidEngine", "RaidCore", "DiskIO", "NBDClient",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "RaidEngineTests", dependencies: ["RaidEngine", "RaidCore", "RaidMath", "DiskIO", "MDOffline", "MDFormat", "TestSupport"]),
        .testTarget(name: "DiskIOTests", dependencies: ["DiskIO", "MDFormat", "RaidCore", "TestSupport"]),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"]),
        .testTarget(
            name: "ControlPlaneTests",
            dependencies: [
                "ControlPlane", "ControlProtocol", "RaidEngine", "RaidCore", "MDOffline", "MDFormat", "DiskIO", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "NBDServerTests",
            dependencies: [
                "NBDServer", "ControlPlane", "ControlProtocol", "NBDClient", "NBDProtocol", "RaidEngine", "RaidCore", "MDOffline", "MDFormat", "DiskIO", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
