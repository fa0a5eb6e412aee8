//! `plugin.json`: the manifest beside every plugin library, and the checks made on it before any
//! plugin code runs.

use std::path::{Component, Path, PathBuf};

pub use pio_plugin_api::validate_plugin_name;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

use crate::{
    digest::sha256_file,
    error::{HostError, HostResult},
    files::read_regular,
};

/// The manifest's file name inside a plugin folder.
pub const MANIFEST_FILE: &str = "plugin.json";

/// The largest manifest read, in bytes. Real manifests take a few hundred bytes; the limit
/// leaves room for a large inline `config` while keeping a runaway file out of memory.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A model file shipped in the plugin folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path relative to the plugin folder.
    pub path: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// The contents of `plugin.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name; must equal the library's metadata.
    pub name: String,
    /// Plugin version; must equal the library's metadata.
    pub version: Version,
    /// Library file, relative to the plugin folder.
    pub library: String,
    /// Lowercase hex SHA-256 of the library.
    pub sha256: String,
    /// `pio-plugin-api` version the library was built against.
    pub plugin_api: Version,
    /// Host versions the plugin accepts.
    pub host: VersionReq,
    /// Model files in the plugin folder, verified before loading.
    #[serde(default)]
    pub models: Vec<ModelFile>,
    /// Configuration passed to the plugin's `initialize`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Manifest {
    /// Reads and parses `dir/plugin.json`, and checks the fields that need no other file.
    ///
    /// The manifest must be a regular file of at most [`MAX_MANIFEST_BYTES`]: a FIFO or a
    /// device under that name is refused without blocking, a larger file without reading it.
    pub fn read(dir: &Path) -> HostResult<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = read_regular(&path, MAX_MANIFEST_BYTES).map_err(|e| match e {
            HostError::Io { source, .. } => HostError::Manifest {
                path: path.clone(),
                reason: match source.kind() {
                    std::io::ErrorKind::NotFound => {
                        "no manifest: a plugin folder needs a plugin.json".to_owned()
                    }
                    _ => source.to_string(),
                },
            },
            other => other,
        })?;
        Self::parse(&bytes, &path)
    }

    /// Parses the bytes of a `plugin.json` and checks the fields that need no other file;
    /// `path` only names the manifest in errors. [`Self::read`] is this after reading the file.
    pub fn parse(bytes: &[u8], path: &Path) -> HostResult<Manifest> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| HostError::Manifest {
                path: path.to_owned(),
                reason: format!("invalid manifest: {e}"),
            })?;
        manifest.check_fields(path)?;
        Ok(manifest)
    }

    /// Writes the manifest as pretty JSON to `dir/plugin.json`, through a temporary file and
    /// a rename, so a watcher never reads half a manifest.
    pub fn write(&self, dir: &Path) -> HostResult<()> {
        let path = dir.join(MANIFEST_FILE);
        let partial = dir.join(format!(".{MANIFEST_FILE}.partial"));
        let text = serde_json::to_string_pretty(self).expect("a manifest always serializes");
        std::fs::write(&partial, text + "\n").map_err(|e| HostError::io(&partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| HostError::io(path, e))
    }

    fn check_fields(&self, path: &Path) -> HostResult<()> {
        let fail = |reason: String| HostError::Manifest {
            path: path.to_owned(),
            reason,
        };
        validate_plugin_name(&self.name).map_err(fail)?;
        check_sha256_syntax(&self.sha256).map_err(|r| fail(format!("'sha256': {r}")))?;
        for model in &self.models {
            check_sha256_syntax(&model.sha256)
                .map_err(|r| fail(format!("model '{}': {r}", model.path)))?;
        }
        if !self.config.is_object() {
            return Err(fail("'config' must be a JSON object".to_owned()));
        }
        Ok(())
    }

    /// `name version`, as used in messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    /// Checks that the plugin's API version and host range fit this host.
    pub fn check_compatibility(&self, host_api: &Version, host: &Version) -> HostResult<()> {
        let incompatible = |reason: String| HostError::Incompatible {
            plugin: self.name.clone(),
            version: self.version.to_string(),
            reason,
        };
        let api_req = compatibility_band(&self.plugin_api);
        if !api_req.matches(host_api) {
            return Err(incompatible(format!(
                "needs pio-plugin-api {api_req}, this host has {host_api}"
            )));
        }
        if !self.host.matches(host) {
            return Err(incompatible(format!(
                "needs pio host {}, this host is {host}",
                self.host
            )));
        }
        Ok(())
    }

    /// Resolves the library path inside `dir`, refusing any escape.
    pub fn library_path(&self, dir: &Path) -> HostResult<PathBuf> {
        resolve_inside(&self.name, dir, &self.library)
    }

    /// Checks that every path stays inside `dir` and every file has the manifest's digest.
    pub fn verify_files(&self, dir: &Path) -> HostResult<()> {
        let library = self.library_path(dir)?;
        verify_digest(&self.name, &library, &self.sha256)?;
        for model in &self.models {
            let path = resolve_inside(&self.name, dir, &model.path)?;
            verify_digest(&self.name, &path, &model.sha256)?;
        }
        Ok(())
    }
}

/// The API versions whose layouts may be compatible with `version`: the same major version, or
/// the same minor version while the major is 0 (`^1`, `^0.4`). Within the band, `abi_stable`'s
/// layout check at load decides: a plugin built against a newer minor version than the host
/// loads (the host ignores the functions it does not know), one built against an older minor
/// version loads only if no function was added since.
pub fn compatibility_band(version: &Version) -> VersionReq {
    let band = if version.major == 0 {
        format!("^0.{}", version.minor)
    } else {
        format!("^{}", version.major)
    };
    VersionReq::parse(&band).expect("a caret requirement parses")
}

fn check_sha256_syntax(digest: &str) -> Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "'{digest}' is not a lowercase hex sha256 (64 characters)"
        ))
    }
}

fn verify_digest(plugin: &str, file: &Path, expected: &str) -> HostResult<()> {
    let actual = sha256_file(file)?;
    if actual == expected {
        Ok(())
    } else {
        Err(HostError::HashMismatch {
            plugin: plugin.to_owned(),
            file: file.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Joins `relative` to `dir` if it is a plain relative path (no `..`, not absolute) whose real
/// location, after following symlinks, is inside `dir`.
pub fn resolve_inside(plugin: &str, dir: &Path, relative: &str) -> HostResult<PathBuf> {
    let escape = |reason: &str| HostError::PathEscape {
        plugin: plugin.to_owned(),
        path: relative.to_owned(),
        reason: reason.to_owned(),
    };
    let candidate = Path::new(relative);
    if relative.is_empty() {
        return Err(escape("empty path"));
    }
    for component in candidate.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(escape("'..' is not allowed in plugin paths")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(escape("absolute paths are not allowed in plugin paths"))
            }
        }
    }
    let joined = dir.join(candidate);
    let real_dir = dir.canonicalize().map_err(|e| HostError::io(dir, e))?;
    let real = joined
        .canonicalize()
        .map_err(|e| HostError::io(&joined, e))?;
    if !real.starts_with(&real_dir) {
        return Err(escape(&format!(
            "resolves to {} outside the plugin folder (symlink)",
            real.display()
        )));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "demo".into(),
            version: Version::new(1, 2, 3),
            library: "libdemo.so".into(),
            sha256: "0".repeat(64),
            plugin_api: Version::new(0, 4, 0),
            host: ">=0.3, <0.5".parse().unwrap(),
            models: vec![],
            config: empty_object(),
        }
    }

    #[test]
    fn api_compatibility_follows_caret_rules() {
        let m = manifest();
        let host = Version::new(0, 4, 0);
        assert!(m.check_compatibility(&Version::new(0, 4, 0), &host).is_ok());
        assert!(m.check_compatibility(&Version::new(0, 4, 7), &host).is_ok());
        let mut newer = m.clone();
        newer.plugin_api = Version::new(0, 4, 9);
        assert!(newer
            .check_compatibility(&Version::new(0, 4, 1), &host)
            .is_ok());
        let err = m
            .check_compatibility(&Version::new(0, 3, 2), &host)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "plugin 'demo' 1.2.3 needs pio-plugin-api ^0.4, this host has 0.3.2"
        );
        let mut stable = m.clone();
        stable.plugin_api = Version::new(2, 1, 0);
        assert!(stable
            .check_compatibility(&Version::new(2, 0, 5), &host)
            .is_ok());
        assert!(stable
            .check_compatibility(&Version::new(3, 0, 0), &host)
            .is_err());
        assert!(m
            .check_compatibility(&Version::new(0, 5, 0), &host)
            .is_err());
    }

    #[test]
    fn host_range_is_enforced() {
        let m = manifest();
        let err = m
            .check_compatibility(&Version::new(0, 4, 0), &Version::new(0, 5, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs pio host >=0.3, <0.5, this host is 0.5.1"),
            "{err}"
        );
    }

    #[test]
    fn paths_must_stay_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lib.so"), b"x").unwrap();
        assert!(resolve_inside("p", dir.path(), "lib.so").is_ok());
        for bad in ["../lib.so", "/etc/passwd", "a/../../x", ""] {
            let err = resolve_inside("p", dir.path(), bad).unwrap_err();
            assert!(matches!(err, HostError::PathEscape { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn symlink_out_of_the_folder_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("lib.so"))
            .unwrap();
        let err = resolve_inside("p", dir.path(), "lib.so").unwrap_err();
        assert!(
            err.to_string().contains("outside the plugin folder"),
            "{err}"
        );
    }

    #[test]
    fn round_trip_and_field_checks() {
        let dir = tempfile::tempdir().unwrap();
        manifest().write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), manifest());

        let mut bad = manifest();
        bad.name = "Bad Name".into();
        bad.write(dir.path()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("plugin.json") && err.contains("lowercase"),
            "{err}"
        );
    }

    #[test]
    fn malformed_and_missing_manifests_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no manifest"), "{err}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("plugin.json: invalid manifest"), "{err}");
    }

    /// Writes `manifest()` as JSON with `edit` applied to it, and returns the error reading it.
    fn read_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(manifest()).unwrap();
        edit(&mut json);
        std::fs::write(dir.path().join(MANIFEST_FILE), json.to_string()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert!(matches!(err, HostError::Manifest { .. }), "{err}");
        err.to_string()
    }

    #[test]
    fn missing_fields_wrong_types_and_unknown_fields_are_named() {
        type Edit = fn(&mut serde_json::Value);
        let cases: [(&str, Edit); 7] = [
            ("missing field `sha256`", |j| {
                j.as_object_mut().unwrap().remove("sha256");
            }),
            ("missing field `library`", |j| {
                j.as_object_mut().unwrap().remove("library");
            }),
            ("invalid type: integer `5`, expected a string", |j| {
                j["library"] = 5.into()
            }),
            (
                "unexpected character 'x' while parsing major version number",
                |j| j["version"] = "x.y".into(),
            ),
            ("invalid type: string \"all\", expected a sequence", |j| {
                j["models"] = "all".into()
            }),
            ("unknown field `extra`", |j| j["extra"] = true.into()),
            ("'config' must be a JSON object", |j| {
                j["config"] = serde_json::json!([1, 2])
            }),
        ];
        for (expected, edit) in cases {
            let err = read_error(edit);
            assert!(
                err.contains("plugin.json: ") && err.contains(expected),
                "expected {expected:?} in {err}"
            );
        }
    }

    #[test]
    fn fifo_and_device_manifests_are_refused_without_blocking() {
        let fifo = tempfile::tempdir().unwrap();
        crate::files::mkfifo(&fifo.path().join(MANIFEST_FILE));
        let zero = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", zero.path().join(MANIFEST_FILE)).unwrap();
        for (dir, kind) in [(&fifo, "a FIFO"), (&zero, "a character device")] {
            let err = Manifest::read(dir.path()).unwrap_err();
            assert!(
                matches!(&err, HostError::NotRegularFile { path, kind: k }
                    if *path == dir.path().join(MANIFEST_FILE) && *k == kind),
                "{err}"
            );
        }
    }

    #[test]
    fn oversized_manifest_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = manifest();
        big.config = serde_json::json!({ "padding": "x".repeat(MAX_MANIFEST_BYTES as usize) });
        big.write(dir.path()).unwrap();
        let err = Manifest::read(dir.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                HostError::FileTooLarge {
                    limit: MAX_MANIFEST_BYTES,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: larger than the limit of 1048576 bytes",
                dir.path().join(MANIFEST_FILE).display()
            )
        );
    }

    #[test]
    fn model_paths_must_stay_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libdemo.so"), b"lib").unwrap();
        let mut m = manifest();
        m.sha256 = sha256_file(&dir.path().join("libdemo.so")).unwrap();
        for bad in ["../weights.bin", "/etc/passwd"] {
            m.models = vec![ModelFile {
                path: bad.to_owned(),
                sha256: "0".repeat(64),
            }];
            let err = m.verify_files(dir.path()).unwrap_err();
            assert!(matches!(err, HostError::PathEscape { .. }), "{bad}: {err}");
        }
    }
}
