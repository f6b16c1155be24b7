//! Evaluation: batched generation over a manifest, answers judged against references.

pub mod metrics;
pub mod runner;

pub use runner::{evaluate, evaluate_with, EvalItem, EvalReport, Scoring};
