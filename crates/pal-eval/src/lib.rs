//! Evaluation: batched generation over a manifest, answers judged against references.

#![warn(missing_docs)]

pub mod metrics;
pub mod runner;

pub use runner::{evaluate, evaluate_with, EvalData, EvalItem, EvalReport, Scoring};
