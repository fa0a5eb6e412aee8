//! A structural check of ELF shared libraries before they are handed to the dynamic loader.
//!
//! `dlopen` maps segments without checking that the file really holds them: a truncated library
//! can load and then crash the host with SIGBUS on first use. This check refuses files whose
//! program or section headers point past the end of the file (the section header table sits at
//! the end of a linked library, so any truncation is caught) and files that are not 64-bit
//! little-endian ELF shared objects. It reads only the ELF header and the program headers.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

const PT_LOAD: u32 = 1;
const ET_DYN: u16 = 3;
const PROGRAM_HEADER_SIZE: u64 = 56;

/// Where the header tables are, from the 64-byte ELF header.
struct Tables {
    ph_offset: u64,
    ph_entry: u64,
    ph_count: u64,
}

/// Checks that `path` is a complete 64-bit little-endian ELF shared object.
pub fn check_shared_library(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| "not an ELF file".to_owned())?;
    let tables = check_header(&header, len)?;
    let mut program_headers = vec![0u8; (tables.ph_entry * tables.ph_count) as usize];
    file.seek(SeekFrom::Start(tables.ph_offset))
        .and_then(|_| file.read_exact(&mut program_headers))
        .map_err(|e| e.to_string())?;
    check_segments(&program_headers, tables.ph_entry as usize, len)
}

fn u16_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn truncated(what: &str, end: u64, len: u64) -> String {
    format!("truncated: {what} ends at byte {end} but the file has {len} bytes")
}

/// Checks the identification, type and table bounds of a 64-byte ELF header.
fn check_header(header: &[u8; 64], len: u64) -> Result<Tables, String> {
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".to_owned());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    if u16_at(header, 16) != u64::from(ET_DYN) {
        return Err("not a shared library (ELF type is not ET_DYN)".to_owned());
    }
    let tables = Tables {
        ph_offset: u64_at(header, 32),
        ph_entry: u16_at(header, 54),
        ph_count: u16_at(header, 56),
    };
    if tables.ph_count > 0 && tables.ph_entry < PROGRAM_HEADER_SIZE {
        return Err("malformed program header table".to_owned());
    }
    let ph_end = tables
        .ph_offset
        .saturating_add(tables.ph_entry * tables.ph_count);
    if ph_end > len {
        return Err(truncated("the program header table", ph_end, len));
    }
    let sh_end = u64_at(header, 40).saturating_add(u16_at(header, 58) * u16_at(header, 60));
    if sh_end > len {
        return Err(truncated("the section header table", sh_end, len));
    }
    Ok(tables)
}

/// Checks that every loadable segment lies inside the file.
fn check_segments(program_headers: &[u8], entry: usize, len: u64) -> Result<(), String> {
    for (index, header) in program_headers.chunks_exact(entry).enumerate() {
        if u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) != PT_LOAD {
            continue;
        }
        let end = u64_at(header, 8).saturating_add(u64_at(header, 32));
        if end > len {
            return Err(truncated(&format!("loadable segment {index}"), end, len));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_elf_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(
            &path,
            b"hello, this is not a library at all; it is text. ".repeat(4),
        )
        .unwrap();
        assert_eq!(check_shared_library(&path).unwrap_err(), "not an ELF file");

        // Test binaries are position-independent executables: ET_DYN, like shared libraries.
        let binary = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        std::fs::write(&path, &binary).unwrap();
        assert!(check_shared_library(&path).is_ok());
        for cut in [binary.len() - 1, binary.len() / 2, 100] {
            std::fs::write(&path, &binary[..cut]).unwrap();
            let err = check_shared_library(&path).unwrap_err();
            assert!(err.starts_with("truncated:"), "cut {cut}: {err}");
        }
        std::fs::write(&path, &binary[..10]).unwrap();
        assert_eq!(check_shared_library(&path).unwrap_err(), "not an ELF file");
    }
}
