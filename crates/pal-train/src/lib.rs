//! Training for pal, readable top to bottom in [`trainer`]: a curriculum of stages, AdamW with
//! warmup and cosine decay, gradient accumulation and clipping, crash-safe checkpoints that resume
//! exactly, a progress bar, a metrics log and a loss plot.

pub mod optim;
