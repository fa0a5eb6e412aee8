//! Opening the files of plugin folders, which anyone who can write the folder controls: only
//! regular files are read, since opening a FIFO blocks until a writer appears and a device such
//! as `/dev/zero` never ends; and files read whole are read only up to a limit.

use std::{
    fs::{File, FileType, OpenOptions},
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use crate::error::{HostError, HostResult};

/// Opens `path` (following symlinks) for reading, if it is a regular file.
///
/// The file is opened with `O_NONBLOCK`, so opening a FIFO returns at once instead of waiting
/// for a writer (on a regular file the flag changes nothing), and its type is checked on the
/// opened file rather than on the path, so the file read is the file checked.
pub fn open_regular(path: &Path) -> HostResult<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| HostError::io(path, e))?;
    let file_type = file
        .metadata()
        .map_err(|e| HostError::io(path, e))?
        .file_type();
    if file_type.is_file() {
        Ok(file)
    } else {
        Err(HostError::NotRegularFile {
            path: path.to_owned(),
            kind: describe(file_type),
        })
    }
}

/// Reads the regular file at `path` whole, refusing one larger than `limit` bytes without
/// reading more than one byte past the limit.
pub fn read_regular(path: &Path, limit: u64) -> HostResult<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| HostError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(HostError::FileTooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

fn describe(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// Makes a FIFO at `path`, for tests (opening it for reading blocks until a writer opens it).
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for (path, kind) in [
            (fifo.as_path(), "a FIFO"),
            (zero.as_path(), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let err = read_regular(path, 10).unwrap_err();
            assert!(
                matches!(&err, HostError::NotRegularFile { path: p, kind: k } if p == path && *k == kind),
                "{}: {err}",
                path.display()
            );
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }

    #[test]
    fn reads_up_to_the_limit_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular(&path, 10).unwrap(), b"0123456789");
        let err = read_regular(&path, 9).unwrap_err();
        assert!(
            matches!(&err, HostError::FileTooLarge { limit: 9, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}: larger than the limit of 9 bytes", path.display())
        );
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = open_regular(Path::new("/nonexistent/file")).unwrap_err();
        assert!(matches!(err, HostError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
    }
}
