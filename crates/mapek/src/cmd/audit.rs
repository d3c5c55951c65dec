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
        /// Keep a key pair that is there already and succeed, instead of refusing (for a
        /// deployment's set-up step, run at every start)
        #[arg(long)]
        keep_existing: bool,
    },
    /// Check every decision in MAPEK_PLAN: its signature, and its link to the decision
    /// before it in its partition; and that each partition's chain still has its start and
    /// the end its signed head (in MAPEK_CHAIN) names. Exits 1 when any check fails
    Verify {
        /// The public key to check signatures with; without it only the links are checked
        #[arg(long, env = "MAPEK_VERIFY_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// Fail a chain whose signed head is older than this (2m): the witness signs every
        /// head each minute while it runs, so an older one is a stopped witness or a head
        /// someone put back [default: any age]
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        max_head_age: Option<std::time::Duration>,
    },
}

/// Runs `mapek audit …`.
pub async fn run(command: AuditCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Keygen { dir, keep_existing } => {
            let secret = dir.join(keys::SECRET_FILE);
            if keep_existing && secret.exists() && dir.join(keys::PUBLIC_FILE).exists() {
                println!("kept the key pair in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let (secret, public) = keys::generate(&dir)?;
            println!(
                "secret key {} (for the plan workers: --signing-key, MAPEK_SIGNING_KEY)\n\
                 public key {} (for executors and audits: --verify-key, MAPEK_VERIFY_KEY)",
                secret.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { key, max_head_age } => {
            let key = key
                .map(|k| VerifyingKey::load(&k))
                .transpose()
                .context("cannot load the verifying key")?;
            let signed = key.is_some();
            let js = mapek_bus::connect(&settings.nats_url).await?;
            let report = mapek_audit::audit::verify_stream_within(&js, key, max_head_age).await?;
            for f in &report.failures {
                println!("seq {}: decision {}: {}", f.seq, f.decision, f.broken);
            }
            for cut in &report.cuts {
                println!("{cut}");
            }
            println!(
                "{} decisions in {} partitions: {} pass, {} fail ({}); {} signed chain heads, \
                 {} chains cut or unproven",
                report.decisions,
                report.partitions,
                report.passed,
                report.failures.len(),
                if signed {
                    "signatures and links checked"
                } else {
                    "links checked; give --key to check signatures too"
                },
                report.heads,
                report.cuts.len(),
            );
            if let Some(at_ms) = report.oldest_head_at_ms {
                let age_ms = mapek_audit::witness::now_ms().saturating_sub(at_ms).max(0);
                println!(
                    "the oldest chain head was signed {} s ago (a running witness signs each \
                     every minute)",
                    age_ms / 1000
                );
            }
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
