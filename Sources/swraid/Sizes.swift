/// Size arguments as mdadm reads them: a bare number is KiB; K, M, G, T suffixes are binary
/// multiples; an S suffix means 512-byte sectors.
enum SizeArgument {
    /// Returns the size in bytes, or nil if `text` is not a size.
    static func parseBytes(_ text: String, bareUnitBytes: UInt64 = 1024) -> UInt64? {
        guard let last = text.last else { return nil }
        var digits = text
        var multiplier = bareUnitBytes
        switch last {
        case "k", "K": multiplier = 1 << 10; digits.removeLast()
        case "m", "M": multiplier = 1 << 20; digits.removeLast()
        case "g", "G": multiplier = 1 << 30; digits.removeLast()
        case "t", "T": multiplier = 1 << 40; digits.removeLast()
        case "s", "S": multiplier = 512; digits.removeLast()
        default: break
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let value = UInt64(digits) else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : bytes
    }

    /// Human form used in messages: 1.50 GiB, 512 KiB.
    static func human(bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        return formatFixed(value, digits: 2) + " " + units[unit]
    }
}

/// `value` with exactly `digits` decimals (no Foundation).
func formatFixed(_ value: Double, digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (value * scale).rounded()
    let negative = scaled < 0
    let magnitude = UInt64(abs(scaled))
    let whole = magnitude / UInt64(scale)
    var frac = String(magnitude % UInt64(scale))
    while frac.count < digits { frac = "0" + frac }
    return (negative ? "-" : "") + String(whole) + (digits > 0 ? "." + frac : "")
}
