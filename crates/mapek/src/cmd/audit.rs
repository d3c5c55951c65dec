//! `mapek audit`: the decision and result keys, and proving the log.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use mapek_audit::VerifyingKey;
use mapek_audit::audit::{AuditOptions, AuditReport};
use mapek_audit::keys::{self, Signs};

use crate::Settings;
use crate::time_arg::{parse_since, to_ms};

/// What a key pair is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyFor {
    /// The plan workers sign decisions (and the witness chain heads): decision.key,
    /// decision.pub
    Decisions,
    /// The executors sign action results: result.key, result.pub
    Results,
}

/// `mapek audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Make an ML-DSA-65 key pair: for signing decisions (decision.key, decision.pub), or
    /// with `--for results` the executors' key for signing results (result.key, result.pub)
    Keygen {
        /// Where to write the two files
        #[arg(long, default_value = "mapek-data/keys", value_name = "DIR")]
        dir: PathBuf,
        /// What the key pair signs
        #[arg(long = "for", value_enum, default_value = "decisions")]
        key_for: KeyFor,
        /// Keep a key pair that is there already and succeed, instead of refusing (for a
        /// deployment's set-up step, run at every start)
        #[arg(long)]
        keep_existing: bool,
    },
    /// Check every decision in MAPEK_PLAN: its signature, and its link to the decision
    /// before it in its partition; that each partition's chain still has its start and the
    /// end its signed head (in MAPEK_CHAIN) names; and every result in MAPEK_EXECUTE: its
    /// signature, that it answers a decision in the log as decided, that a refusal carries
    /// the escalation its policy gives, and that no result an executor stored is gone. Exits
    /// 1 when any check fails
    Verify {
        /// The decision key's public half, to check decisions' and chain heads' signatures
        /// with; without it only the links are checked
        #[arg(long, env = "MAPEK_VERIFY_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// The result key's public half, to check results' signatures with: then every
        /// result must be signed by it; without it results' signatures are not checked
        #[arg(long, env = "MAPEK_RESULT_VERIFY_KEY", value_name = "FILE")]
        result_key: Option<PathBuf>,
        /// With --result-key, results stored before this time (RFC 3339, or a duration ago
        /// such as 30d) may be unsigned: they were written before the executors signed. They
        /// are counted, not failed [default: every result must be signed]
        #[arg(long, value_name = "TIME", requires = "result_key", value_parser = parse_since)]
        results_signed_since: Option<time::OffsetDateTime>,
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
        AuditCommand::Keygen {
            dir,
            key_for,
            keep_existing,
        } => {
            let signs = match key_for {
                KeyFor::Decisions => Signs::Decisions,
                KeyFor::Results => Signs::Results,
            };
            let (secret_file, public_file) = signs.files();
            if keep_existing && dir.join(secret_file).exists() && dir.join(public_file).exists() {
                println!("kept the key pair in {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            let (secret, public) = keys::generate_for(&dir, signs)?;
            let (signer, checker) = match signs {
                Signs::Decisions => (
                    "for the plan workers: --signing-key, MAPEK_SIGNING_KEY",
                    "for executors and audits: --verify-key, MAPEK_VERIFY_KEY",
                ),
                Signs::Results => (
                    "for the executors: --result-signing-key, MAPEK_RESULT_SIGNING_KEY",
                    "for audits: --result-key, MAPEK_RESULT_VERIFY_KEY",
                ),
            };
            println!(
                "secret key {} ({signer})\npublic key {} ({checker})",
                secret.display(),
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            key,
            result_key,
            results_signed_since,
            max_head_age,
        } => {
            let load = |path: Option<PathBuf>, what: &str| {
                path.map(|k| VerifyingKey::load(&k))
                    .transpose()
                    .with_context(|| format!("cannot load the {what}"))
            };
            let options = AuditOptions {
                decision_key: load(key, "verifying key")?,
                result_key: load(result_key, "result verifying key")?,
                head_within: max_head_age,
                results_signed_since_ms: results_signed_since.map(to_ms),
            };
            let (signed, results_signed) =
                (options.decision_key.is_some(), options.result_key.is_some());
            let js = mapek_bus::connect(&settings.nats_url).await?;
            let report = mapek_audit::audit::verify(&js, options).await?;
            print_report(&report, signed, results_signed);
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Prints every failure, then what was checked and how much passed.
fn print_report(report: &AuditReport, signed: bool, results_signed: bool) {
    for f in &report.failures {
        println!("seq {}: decision {}: {}", f.seq, f.decision, f.broken);
    }
    for cut in &report.cuts {
        println!("{cut}");
    }
    for f in &report.result_failures {
        println!("{f}");
    }
    println!(
        "{} decisions in {} partitions: {} pass, {} fail ({}); {} signed chain heads, {} chains \
         cut or unproven",
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
    let missing = report
        .result_failures
        .iter()
        .filter(|f| f.seq.is_none())
        .count();
    println!(
        "{} results: {} pass, {} fail, {missing} missing ({})",
        report.results,
        report.results_passed,
        report.result_failures.len() - missing,
        if results_signed {
            format!(
                "signatures checked: {} signed, {} unsigned from before the executors signed",
                report.results_verified, report.results_unsigned_before
            )
        } else {
            "decisions and escalations checked; give --result-key to check signatures too"
                .to_owned()
        },
    );
    if let Some(at_ms) = report.oldest_head_at_ms {
        let age_ms = mapek_audit::witness::now_ms().saturating_sub(at_ms).max(0);
        println!(
            "the oldest chain head was signed {} s ago (a running witness signs each every \
             minute)",
            age_ms / 1000
        );
    }
}
