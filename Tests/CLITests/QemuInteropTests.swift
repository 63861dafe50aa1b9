import Foundation
import MDOffline
import TestSupport
import Testing

let qemuInteropEnabled = ProcessInfo.processInfo.environment["SWRAID_QEMU_INTEROP"] == "1"

/// Arrays made by `swraid create` are assembled by the real Linux kernel (Debian's, booted in
/// qemu with mdadm in a busybox initramfs), checked by md (`mismatch_cnt` must be 0) and read back
/// (its sha256 must be what `swraid cat` reads). Opt-in locally (SWRAID_QEMU_INTEROP=1, as
/// .ci/run sets it): each case boots a VM under software emulation, ~10-30 s.
@Suite(.serialized, .enabled(if: qemuInteropEnabled, "set SWRAID_QEMU_INTEROP=1 to boot Linux md in qemu (.ci/run does)"))
struct QemuInteropTests {
    static let cases: [[String]] = [
        ["--level", "6", "--raid-devices", "6", "--chunk", "64K", "--bitmap", "internal", "--bitmap-chunk", "1M", "--size", "16M"],
        ["--level", "5", "--raid-devices", "4", "--layout", "left-asymmetric", "--chunk", "128K", "--size", "12M"],
        ["--level", "5", "--raid-devices", "3", "--size", "8M"],  // defaults: left-symmetric, 512K
        ["--level", "6", "--raid-devices", "5", "--layout", "right-asymmetric-6", "--chunk", "32K", "--size", "8M"],
        ["--level", "6", "--raid-devices", "5", "--layout", "ddf-N-continue", "--chunk", "16K", "--size", "8M"],
        ["--level", "6", "--raid-devices", "4", "--layout", "parity-first", "--chunk", "64K", "--size", "8M"],
        ["--level", "4", "--raid-devices", "3", "--chunk", "64K", "--size", "8M"],
    ]

    @Test(arguments: cases)
    func kernelMdAssemblesChecksAndReadsSwraidArray(options: [String]) throws {
        let dir = TemporaryDirectory("swraid-interop")
        let n = Int(options[options.firstIndex(of: "--raid-devices")! + 1])!
        let sizeMiB = Int(options[options.firstIndex(of: "--size")! + 1].dropLast())!
        let members = (0..<n).map { dir.file("disk\($0).img") }
        // Members arrive full of data; create must make parity consistent with it.
        for (i, member) in members.enumerated() {
            let bytes = (sizeMiB + 4) << 20
            FileManager.default.createFile(atPath: member, contents: Data(pseudoRandomData(bytes, seed: UInt64(i) + UInt64(n) * 1000)))
        }
        let created = try runProcess(swraidExecutable, ["create"] + options + members)
        #expect(created.status == 0, "\(created.stderr)")

        let array = try OfflineArray(paths: members)
        var hash = SHA256()
        try array.stream(sink: { hash.update($0) })
        let sha = SHA256.hex(hash.finalize())
        #expect(try array.check().mismatchSectors == 0)

        let script = FixturePaths.packageRoot + "/Tests/Interop/qemu-md-check.sh"
        let log = dir.file("console.log")
        let result = try runProcess(
            "/bin/bash",
            [script, "--expect-sha256", sha, "--expect-bytes", String(array.arraySizeBytes), "--expect-clean", "--timeout", "600", "--log", log]
                + members)
        let output = result.stdoutText + result.stderr
        // 77 = the harness could not run (no qemu/kernel); with the suite enabled that is a failure.
        #expect(result.status == 0, "qemu-md-check failed (\(result.status)) for \(options):\n\(output)")
        #expect(output.contains("RESULT mismatch_cnt=0"), "\(output)")
        #expect(output.contains("RESULT sha256=\(sha)"), "\(output)")
    }
}
