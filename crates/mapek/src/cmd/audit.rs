//! `mapek audit`: the decision key, and proving the decision log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mapek_audit::{VerifyingKey, keys};

use crate::Settings;

/// `mapek audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Make an ML-DSA-65 key pair for signing decisions (decision.key, decision.pub)
    Keygen {
        /// Where to write the two files
        #[arg(long, default_value = "mapek-data/keys", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Check every decision in MAPEK_PLAN: its signature, and its link to the decision
    /// before it in its partition. Exits 1 when any decision fails
    Verify {
        /// The public key to check signatures with; without it only the links are checked
        #[arg(long, env = "MAPEK_VERIFY_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

/// Runs `mapek audit …`.
pub async fn run(command: AuditCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Keygen { dir } => {
            let (secret, public) = keys::generate(&dir)?;
            println!(
                "secret key {} (for the plan workers: --signing-key, MAPEK_SIGNING_KEY)\n\
                 public key {} (for executors and audits: --verify-key, MAPEK_VERIFY_KEY)",
                secret.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { key } => {
            let key = key
                .map(|k| VerifyingKey::load(&k))
                .transpose()
                .context("cannot load the verifying key")?;
            let signed = key.is_some();
            let js = mapek_bus::connect(&settings.nats_url).await?;
            let report = mapek_audit::audit::verify_stream(&js, key).await?;
            for f in &report.failures {
                println!("seq {}: decision {}: {}", f.seq, f.decision, f.broken);
            }
            println!(
                "{} decisions in {} partitions: {} pass, {} fail ({})",
                report.decisions,
                report.partitions,
                report.passed,
                report.failures.len(),
                if signed {
                    "signatures and links checked"
                } else {
                    "links checked; give --key to check signatures too"
                }
            );
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
