//! Sizes in configuration and flags: `300MiB`, `1.5GB`, `2g` or a number of bytes.

use bytesize::ByteSize;

/// Parses a size: a number of bytes, or a number with a unit (`KB`, `MiB`, `GB`, ... as the
/// `bytesize` crate reads them: `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<u64>() {
        return Ok(bytes);
    }
    text.parse::<ByteSize>().map(|size| size.as_u64()).map_err(|e| {
        format!("invalid size '{text}': {e} (expected bytes, or a number with a unit like 300MiB or 1.5GB)")
    })
}

/// A size for people: `300.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("300MiB"), Ok(300 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 KiB "), Ok(2048));
        assert!(parse_size("lots")
            .unwrap_err()
            .contains("invalid size 'lots'"));
        assert!(parse_size("-3MiB").is_err());
    }

    #[test]
    fn sizes_format_in_binary_units() {
        assert_eq!(format_size(300 << 20), "300.0 MiB");
    }
}
