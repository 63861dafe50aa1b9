#!/usr/bin/env bash
# Builds and runs a small package that depends on swraid's library products *by version*, from
# a local git tag, the way another project would use them. SwiftPM refuses such a dependency when
# any product it uses carries unsafe build flags; this is the proof that none does.
#
# Usage: tools/ci/library-consumer.sh [--keep]   (--keep leaves the scratch directory)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
scratch="$(mktemp -d /tmp/swraid-consumer.XXXXXX)"
keep=0
[ "${1:-}" = "--keep" ] && keep=1
# SwiftPM also leaves lock files named after the package's path in /tmp ("_tmp_swraid-consumer.X_...").
cleanup() { [ "$keep" = 1 ] || rm -rf "$scratch" /tmp/"$(echo "$scratch" | tr / _)"_*; }
trap cleanup EXIT

# The committed tree at HEAD, tagged with a version (the working tree's edits are not in it).
git clone -q "$repo" "$scratch/swraid"
git -C "$scratch/swraid" -c user.name=ci -c user.email=ci@localhost tag -a 0.0.1 -m "consumer test" HEAD

mkdir -p "$scratch/consumer/Sources/Consumer"
cat > "$scratch/consumer/Package.swift" <<MANIFEST
// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Consumer",
    platforms: [.macOS(.v15)],
    dependencies: [.package(url: "file://$scratch/swraid", exact: "0.0.1")],
    targets: [
        .executableTarget(
            name: "Consumer",
            dependencies: [
                .product(name: "RaidMath", package: "swraid"),
                .product(name: "MDFormat", package: "swraid"),
                .product(name: "MDOffline", package: "swraid"),
                .product(name: "RaidCore", package: "swraid"),
                .product(name: "DiskIO", package: "swraid"),
                .product(name: "RaidEngine", package: "swraid"),
                .product(name: "NBDServer", package: "swraid"),
                .product(name: "NBDProtocol", package: "swraid"),
                .product(name: "ControlPlane", package: "swraid"),
                .product(name: "ControlProtocol", package: "swraid"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
MANIFEST
cat > "$scratch/consumer/Sources/Consumer/main.swift" <<'SWIFT'
import ControlPlane
import ControlProtocol
import Foundation
import DiskIO
import MDFormat
import MDOffline
import NBDProtocol
import NBDServer
import RaidCore
import RaidEngine
import RaidMath

// RAID6 parity of four 4 KiB blocks, through the fastest kernels this CPU has, then one data
// block lost and rebuilt from P and Q.
let blockBytes = 4096
let blocks = (0..<4).map { i in (0..<blockBytes).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) } }
var p = [UInt8](repeating: 0, count: blockBytes)
var q = [UInt8](repeating: 0, count: blockBytes)
let pointers = blocks.map { $0.withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) } }
p.withUnsafeMutableBytes { pb in
    q.withUnsafeMutableBytes { qb in
        Parity.pq(slots: pointers, p: pb.baseAddress!, q: qb.baseAddress!, byteCount: blockBytes)
    }
}
// P is the XOR of the blocks: checked byte by byte in plain Swift.
for i in 0..<blockBytes where p[i] != blocks.reduce(0, { $0 ^ $1[i] }) {
    print("consumer: P is wrong at byte \(i)")
    exit(1)
}
print("parity kernels: \(ParityKernelTier.best)")
print("P[0..3] = \(Array(p[0..<4])), Q[0..3] = \(Array(q[0..<4]))")
print("control request: \(String(describing: try? ControlRequest.parse("get array_state")))")
print("io buffer pool keeps at most \(IOBufferPool.shared.maxIdleBytes >> 20) MiB idle")
print("consumer: ok")
SWIFT

cd "$scratch/consumer"
swift build 2>&1 | tail -5
"$(swift build --show-bin-path)/Consumer"
