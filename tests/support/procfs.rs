//! What Linux's `/proc` says about this process and its children: resident memory, the worker
//! processes a host started, and the files it has mapped (library copies are never unmapped).

use std::path::Path;

/// A `status` field in KiB (`VmRSS:`, `RssAnon:`, ...) of process `pid` (`"self"` for this
/// one); 0 if it cannot be read.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory (KiB) of this process's children: the worker processes.
pub fn children_rss_kib() -> u64 {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // Fields after the parenthesised command name: state, ppid, ...
            let after_name = &stat[stat.rfind(')')? + 2..];
            (after_name.split_whitespace().nth(1)? == me).then(|| status_kib(&pid, "VmRSS:"))
        })
        .sum()
}

/// The distinct files under `dir` mapped into this process, sorted.
pub fn mapped_files_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mut files: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| Path::new(path).starts_with(&dir))
        .map(str::to_owned)
        .collect();
    files.sort_unstable();
    files.dedup();
    files
}
