import Foundation

// libFuzzer's own driver, linked in by `-sanitize=fuzzer`.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// The input libFuzzer offers, as bytes.
public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeBufferPointer<UInt8> {
    UnsafeBufferPointer(start: size == 0 ? nil : data, count: size)
}

/// A fuzzer's `main`: `--write-seeds DIR` writes the target's seed inputs (made by swraid's own
/// encoders, so they stay true to the formats) and exits; anything else goes to libFuzzer.
public func fuzzerMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
    seeds: () -> [(name: String, bytes: [UInt8])],
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt {
    if argc == 3, let flag = argv?[1], String(cString: flag) == "--write-seeds", let dir = argv?[2] {
        let directory = URL(fileURLWithPath: String(cString: dir))
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            for seed in seeds() {
                try Data(seed.bytes).write(to: directory.appendingPathComponent(seed.name))
            }
        } catch {
            FileHandle.standardError.write(Data("cannot write seeds: \(error)\n".utf8))
            return 1
        }
        return 0
    }
    var count = argc
    var values = argv
    return LLVMFuzzerRunDriver(&count, &values, callback)
}

/// A property the code under test broke: the fuzzer reports it as a crash, with the input.
public func fuzzCheck(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz property broken: \(message())", file: file, line: line) }
}
