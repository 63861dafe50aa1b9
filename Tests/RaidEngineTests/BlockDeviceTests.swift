import DiskIO
import Foundation
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

let canUseLoopDevices = getuid() == 0 && which("losetup") != nil

/// Loop devices over files, detached again when the value goes.
final class LoopDevices {
    private(set) var devices: [String] = []

    init(_ files: [String]) throws {
        for file in files {
            let result = try runProcess(which("losetup")!, ["--find", "--show", file])
            guard result.status == 0 else { throw SystemError("losetup \(file): \(result.stderr)") }
            devices.append(result.stdoutText.trimmingWhitespace())
        }
    }

    deinit {
        for device in devices { _ = try? runProcess(which("losetup")!, ["--detach", device]) }
    }
}

/// Members that are block devices (loop devices here), opened with O_DIRECT: sizes come from
/// the device (BLKGETSIZE64), I/O bypasses the page cache with aligned buffers.
@Suite(.enabled(if: canUseLoopDevices, "needs root and losetup (loop devices over the member files)"))
struct BlockDeviceTests {
    @Test func anArrayOfBlockDevicesWithDirectIO() async throws {
        let dir = TemporaryDirectory()
        let files = try makeArray(in: dir, level: .raid6, disks: 5)
        let loops = try LoopDevices(files)
        let first = try MemberFile(path: loops.devices[0], mode: .readOnly)
        #expect(first.isBlockDevice)
        #expect(try first.size() == (try MemberFile(path: files[0], mode: .readOnly).size()))
        first.close()
        var options = testOptions()
        options.direct = true
        let engine = try RaidEngine.assemble(paths: loops.devices, options: options, logger: quietLogger)
        let shadow = Shadow(sizeBytes: Int(engine.sizeBytes))
        try await runWorkload(engine, shadow: shadow, seed: 31, requests: 300)
        try await verifyWholeArray(engine, shadow)
        try await engine.set("sync_action", "check")
        await engine.waitForSync()
        #expect(try await engine.attribute("mismatch_cnt") == "0")
        await engine.stop()
        try verifyOffline(loops.devices, shadow)
    }
}
