//! `mapek knowledge`: ask the knowledge about past incidents, and project it again from the log.
//!
//! # Layout
//! - [`similar`]: `mapek knowledge similar <incident>`, the nearest past incidents.
//! - [`rebuild`]: `mapek knowledge rebuild`, every projection again into empty stores.

pub mod rebuild;
pub mod similar;

use std::process::ExitCode;

use crate::Settings;

/// `mapek knowledge` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KnowledgeCommand {
    /// The nearest past incidents to one, with their actions and outcomes
    Similar(similar::SimilarArgs),
    /// Empty the stores and project everything again from the log
    Rebuild(rebuild::RebuildArgs),
}

/// Runs `mapek knowledge …`.
pub async fn run(command: KnowledgeCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        KnowledgeCommand::Similar(a) => similar::run(a, settings).await,
        KnowledgeCommand::Rebuild(a) => rebuild::run(a, settings).await,
    }
}
