//! A structural check of ELF shared libraries before they are handed to the dynamic loader.
//!
//! `dlopen` maps segments without checking that the file really holds them: a truncated library
//! can load and then crash the host with SIGBUS on first use. This check refuses files whose
//! program or section headers point past the end of the file (the section header table sits at
//! the end of a linked library, so any truncation is caught) and files that are not 64-bit
//! little-endian ELF shared objects.

use std::path::Path;

const PT_LOAD: u32 = 1;
const ET_DYN: u16 = 3;

/// Checks that `path` is a complete 64-bit little-endian ELF shared object.
pub fn check_shared_library(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    check_bytes(&bytes)
}

fn check_bytes(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".to_owned());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u16_at(16) != ET_DYN {
        return Err("not a shared library (ELF type is not ET_DYN)".to_owned());
    }
    let truncated = |what: String, end: u64| {
        Err(format!(
            "truncated: {what} ends at byte {end} but the file has {len} bytes"
        ))
    };

    let (ph_offset, ph_size, ph_count) = (u64_at(32), u64::from(u16_at(54)), u64::from(u16_at(56)));
    let ph_end = ph_offset.saturating_add(ph_size.saturating_mul(ph_count));
    if ph_end > len || (ph_count > 0 && ph_size < 56) {
        return truncated("the program header table".to_owned(), ph_end);
    }
    for index in 0..ph_count {
        let at = (ph_offset + index * ph_size) as usize;
        if u32_at(at) != PT_LOAD {
            continue;
        }
        let segment_end = u64_at(at + 8).saturating_add(u64_at(at + 32));
        if segment_end > len {
            return truncated(format!("loadable segment {index}"), segment_end);
        }
    }

    let (sh_offset, sh_size, sh_count) = (u64_at(40), u64::from(u16_at(58)), u64::from(u16_at(60)));
    let sh_end = sh_offset.saturating_add(sh_size.saturating_mul(sh_count));
    if sh_end > len {
        return truncated("the section header table".to_owned(), sh_end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_test_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn refuses_non_elf_and_truncated_files() {
        assert_eq!(check_bytes(b"hello").unwrap_err(), "not an ELF file");
        // Test binaries are position-independent executables: ET_DYN, like shared libraries.
        let binary = this_test_binary();
        assert!(check_bytes(&binary).is_ok());
        for cut in [binary.len() - 1, binary.len() / 2, 100] {
            let err = check_bytes(&binary[..cut]).unwrap_err();
            assert!(err.starts_with("truncated:"), "cut {cut}: {err}");
        }
    }
}
