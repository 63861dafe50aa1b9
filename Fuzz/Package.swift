// swift-tools-version: 6.1
// The fuzzers: libFuzzer drivers around swraid's parsers of what arrives from outside (NBD
// clients, member superblocks and bitmaps, control-socket requests). A package of their own:
// they link only with `-sanitize=fuzzer`, which the normal build must not carry.
// Build and run with tools/fuzz/run.sh (it gives the build line).
import PackageDescription

let package = Package(
    name: "swraid-fuzz",
    dependencies: [.package(name: "swraid", path: "..")],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "FuzzNBD", dependencies: ["FuzzDriver", .product(name: "NBDProtocol", package: "swraid")]),
        .executableTarget(name: "FuzzSuperblock", dependencies: ["FuzzDriver", .product(name: "MDFormat", package: "swraid"), .product(name: "RaidCore", package: "swraid")]),
        .executableTarget(name: "FuzzControl", dependencies: ["FuzzDriver", .product(name: "ControlProtocol", package: "swraid")]),
    ],
    swiftLanguageModes: [.v6]
)
