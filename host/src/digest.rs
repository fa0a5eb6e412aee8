//! SHA-256 digests of files, as written in manifests (lowercase hex).

use std::{io::Read, path::Path};

use sha2::{Digest, Sha256};

use crate::{
    error::{HostError, HostResult},
    files::open_regular,
};

/// The lowercase hex SHA-256 of the regular file at `path`, read in chunks. Anything else (a
/// FIFO, a device) is refused with [`HostError::NotRegularFile`] rather than read forever.
pub fn sha256_file(path: &Path) -> HostResult<String> {
    sha256_of_regular_file(path, |_| Ok(()))
}

/// Like [`sha256_file`], handing every chunk read to `chunk` too (a copy made while hashing
/// then has exactly the digest returned).
pub fn sha256_of_regular_file(
    path: &Path,
    mut chunk: impl FnMut(&[u8]) -> HostResult<()>,
) -> HostResult<String> {
    let mut file = open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| HostError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        chunk(&buffer[..n])?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fifos_and_devices_are_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("lib.so");
        crate::files::mkfifo(&fifo);
        let zero = dir.path().join("model.bin");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for path in [fifo, zero] {
            let err = sha256_file(&path).unwrap_err();
            assert!(
                matches!(&err, HostError::NotRegularFile { path: p, .. } if *p == path),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = sha256_file(Path::new("/nonexistent/file")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/file"));
    }
}
