//! Crash-safe checkpoints: trainable weights, optimizer moments, the trainer's position and the
//! run's configs, written into a temporary folder that is then renamed into place, with a `latest`
//! pointer replaced the same way. A kill at any moment leaves the previous checkpoint intact; the
//! last two are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use pal_data::BatchState;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Where training stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Current stage.
    pub stage: usize,
    /// Optimizer steps done in this stage.
    pub stage_step: u64,
    /// Optimizer steps done in all stages.
    pub global_step: u64,
    /// Data position in this stage (of the global batches: every rank is at the same one).
    pub batches: BatchState,
    /// Ranks of the run that wrote it (0 in checkpoints from before distributed training: 1).
    #[serde(default)]
    pub world_size: usize,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Its folder.
    pub dir: PathBuf,
    /// Trainer position.
    pub state: TrainState,
    /// Optimizer moments.
    pub optimizer: HashMap<String, Tensor>,
}

const KEEP: usize = 2;

/// Writes a checkpoint under `root` (`root/step-NNNNNNNN`) and points `root/latest` at it.
pub fn save(
    root: &Path,
    state: &TrainState,
    params: &pal_nn::Params,
    optimizer: &HashMap<String, Tensor>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::Io(root.to_path_buf(), e))?;
    let name = format!("step-{:08}", state.global_step);
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::Io(tmp.clone(), e))?;
    params
        .save(&tmp.join("adapter.safetensors"))
        .map_err(|e| TrainError::Checkpoint(tmp.clone(), e.to_string()))?;
    if !optimizer.is_empty() {
        candle_core::safetensors::save(optimizer, tmp.join("optimizer.safetensors"))
            .map_err(|e| TrainError::Checkpoint(tmp.clone(), e.to_string()))?;
    }
    // The configs travel with each checkpoint, so any one of them can rebuild the run.
    if let Some(run) = root.parent() {
        for config in ["model.toml", "curriculum.toml"] {
            if run.join(config).exists() {
                std::fs::copy(run.join(config), tmp.join(config))
                    .map_err(|e| TrainError::Io(tmp.join(config), e))?;
            }
        }
    }
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    std::fs::write(tmp.join("state.json"), json).map_err(|e| TrainError::Io(tmp.clone(), e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::Io(dir.clone(), e))?;
    let pointer_tmp = root.join(format!("latest.tmp{}", std::process::id()));
    std::fs::write(&pointer_tmp, &name).map_err(|e| TrainError::Io(pointer_tmp.clone(), e))?;
    std::fs::rename(&pointer_tmp, root.join("latest"))
        .map_err(|e| TrainError::Io(root.join("latest"), e))?;
    // Keep the newest KEEP checkpoints.
    let mut all: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| TrainError::Io(root.to_path_buf(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("step-")
                        && !n.to_string_lossy().contains(".tmp")
                })
        })
        .collect();
    all.sort();
    for old in all.iter().rev().skip(KEEP) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dir)
}

/// The checkpoint `root/latest` points to, if any.
pub fn latest(root: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(root.join("latest")).ok()?;
    Some(root.join(name.trim()))
}

/// The trainer position stored in a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let state_path = dir.join("state.json");
    let text =
        std::fs::read_to_string(&state_path).map_err(|e| TrainError::Io(state_path.clone(), e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(state_path.clone(), e.to_string()))
}

/// Loads a checkpoint folder into `params`; a damaged file is an error naming it (the folder is
/// left as it is, and older checkpoints beside it are untouched).
pub fn load(dir: &Path, params: &pal_nn::Params) -> Result<Checkpoint, TrainError> {
    let state_path = dir.join("state.json");
    let text =
        std::fs::read_to_string(&state_path).map_err(|e| TrainError::Io(state_path.clone(), e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(state_path.clone(), e.to_string()))?;
    let adapter = dir.join("adapter.safetensors");
    params
        .load(&adapter)
        .map_err(|e| TrainError::Checkpoint(adapter.clone(), e.to_string()))?;
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer = if opt_path.exists() {
        // Onto the parameters' device, where the optimizer steps them.
        candle_core::safetensors::load(&opt_path, params.device())
            .map_err(|e| TrainError::Checkpoint(opt_path.clone(), e.to_string()))?
    } else {
        HashMap::new()
    };
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        optimizer,
    })
}
