//! Arbitrary bytes as a plugin's `plugin.json`: parsing and the field checks must fail with an
//! error or give a manifest whose compatibility check and library path resolution (against an
//! empty temporary plugin folder) end without a panic, and never resolve outside the folder.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pio_host::manifest::{compatibility_band, resolve_inside, Manifest};
use semver::Version;

/// One empty plugin folder for the whole run, so every resolution really touches the disk.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data, Path::new("plugin.json")) else {
        return;
    };
    let _ = manifest.label();
    let _ = compatibility_band(&manifest.plugin_api);
    for host in [Version::new(0, 1, 0), Version::new(1, 0, 0)] {
        let _ = manifest.check_compatibility(&Version::new(0, 4, 0), &host);
    }
    let dir = plugin_dir();
    // The folder is empty, so the only path that can resolve is the folder itself ("." and
    // the like): anything else found would be outside it.
    for path in std::iter::once(&manifest.library).chain(manifest.models.iter().map(|m| &m.path)) {
        if let Ok(real) = resolve_inside(&manifest.name, dir, path) {
            assert_eq!(
                real,
                dir.canonicalize().unwrap(),
                "{path:?} resolved outside"
            );
        }
    }
    let _ = manifest.library_path(dir);
    // What `Manifest::write` writes parses again to the same manifest (`config` aside: JSON
    // floats need not round-trip bit for bit).
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let mut again = Manifest::parse(&text, Path::new("plugin.json")).expect("a round trip parses");
    let mut original = manifest;
    (again.config, original.config) = (serde_json::Value::Null, serde_json::Value::Null);
    assert_eq!(again, original);
});
