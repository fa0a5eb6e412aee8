//! The frozen plugin API fixtures: `tests/fixtures/api-0.1.0`, the plugin API as released in
//! 0.1.0, kept as it was, and a plugin written against it, built as that release or as the next
//! compatible or incompatible one would be (a cargo feature and a second manifest over the same
//! sources, not edited sources); and `tests/fixtures/api-0.1.1`, the API as released in 0.1.1
//! with a plugin written against it.

use std::{path::PathBuf, process::Command, sync::Mutex};

use crate::{target_dir, workspace_root};

/// Which API release the fixture plugin is built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRelease {
    /// 0.1.0 exactly as released.
    Released,
    /// 0.1.1: 0.1.0 with a function appended to the root module, as a compatible release adds.
    NextMinor,
    /// 0.2.0: the next incompatible release.
    NextMajor,
    /// 0.1.1 exactly as released (its own fixture).
    V0_1_1,
}

impl ApiRelease {
    /// The fixture's folder (under `tests/fixtures`), its workspace (relative to that folder)
    /// and the feature it is built with.
    fn build(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            ApiRelease::Released => ("api-0.1.0", ".", None),
            ApiRelease::NextMinor => ("api-0.1.0", ".", Some("next-minor")),
            ApiRelease::NextMajor => ("api-0.1.0", "next-major", None),
            ApiRelease::V0_1_1 => ("api-0.1.1", ".", None),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ApiRelease::Released => "released",
            ApiRelease::NextMinor => "next-minor",
            ApiRelease::NextMajor => "next-major",
            ApiRelease::V0_1_1 => "v0.1.1",
        }
    }
}

/// Builds the fixture plugin (`compat`) against `release` and returns a copy of its library
/// that later builds leave alone. The builds share one target directory, apart from the
/// workspace's, so the dependencies are compiled once.
pub fn frozen_api_plugin(release: ApiRelease) -> PathBuf {
    // One build at a time in this process: each writes the same output file.
    static BUILDS: Mutex<()> = Mutex::new(());
    let _serialised = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let (folder, workspace, feature) = release.build();
    let fixture = workspace_root().join("tests/fixtures").join(folder);
    let target = target_dir().join("fixtures").join(folder);
    let mut build = Command::new(env!("CARGO"));
    build
        // Its own lock file pins the dependencies it was released with: fetched once if the
        // workspace does not use the same versions.
        .args(["build", "--locked", "--quiet", "--manifest-path"])
        .arg(fixture.join(workspace).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR");
    if let Some(feature) = feature {
        build.args(["--features", feature]);
    }
    let status = build.status().expect("cargo runs");
    assert!(
        status.success(),
        "building the frozen-API fixture plugin ({}) failed",
        release.name()
    );
    let file = |suffix: &str| {
        format!(
            "libpio_plugin_compat{suffix}{}",
            std::env::consts::DLL_SUFFIX
        )
    };
    let built = target.join("debug").join(file(""));
    let kept = target.join(file(&format!("-{}", release.name())));
    std::fs::copy(&built, &kept).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    kept
}
