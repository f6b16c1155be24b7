//! Evaluation: batched generation over a manifest or shard set, answers judged against
//! references; `pal probe`'s grid of encoders x modes x seeds and its statistics.

#![warn(missing_docs)]

pub mod metrics;
pub mod probe;
pub mod probe_attention;
pub mod probe_external;
pub mod probe_plot;
pub mod probe_report;
pub mod probe_table;
pub mod runner;
pub mod stats;
pub mod wellformed;

pub use runner::{evaluate, evaluate_with, EvalData, EvalItem, EvalReport, Scoring};
