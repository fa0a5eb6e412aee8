//! GPT-2's reversible byte ↔ printable-character mapping used by byte-level
//! BPE vocabularies (a space is written `Ġ`, a newline `Ċ`).

use std::sync::OnceLock;

/// Bytes GPT-2 maps to themselves: printable Latin-1 except the soft hyphen.
fn is_self_mapped(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character each byte is written as in the vocabulary. Bytes that are
/// not self-mapped get U+0100, U+0101, ... in increasing byte order.
pub fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            table[usize::from(b)] = if is_self_mapped(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("U+0100..U+0143 are valid chars")
            };
        }
        table
    })
}

/// Inverse of [`byte_to_char`], indexed by code point (all mapped chars are < U+0200).
fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: OnceLock<[Option<u8>; 0x200]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [None; 0x200];
        for (b, &c) in byte_to_char().iter().enumerate() {
            table[c as usize] = Some(b as u8);
        }
        table
    });
    table.get(c as usize).copied().flatten()
}

/// The bytes a byte-level vocabulary entry stands for.
///
/// A token containing a character outside the mapping (which a well-formed
/// byte-level vocabulary never has) is taken as literal UTF-8, as the
/// `tokenizers` ByteLevel decoder does.
pub fn token_bytes(token: &str) -> Vec<u8> {
    token
        .chars()
        .map(char_to_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Writes `bytes` in the vocabulary's character alphabet (handy for
/// building byte-level vocabularies in tests).
pub fn encode_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| byte_to_char()[usize::from(b)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_gpt2_table() {
        assert_eq!(byte_to_char()[usize::from(b' ')], 'Ġ');
        assert_eq!(byte_to_char()[usize::from(b'\n')], 'Ċ');
        assert_eq!(byte_to_char()[0], '\u{100}');
        assert_eq!(byte_to_char()[0xAD], 'Ń');
        assert_eq!(byte_to_char()[usize::from(b'a')], 'a');
        assert_eq!(byte_to_char()[0xE9], 'é');
    }

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(token_bytes(&encode_bytes(&all)), all);
        assert_eq!(token_bytes("ĠhelloĊ"), b" hello\n");
        // Not a byte-level string: taken literally.
        assert_eq!(token_bytes("｜x"), "｜x".as_bytes());
    }
}
