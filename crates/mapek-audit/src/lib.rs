//! mapek's audit trail: every decision signed with ML-DSA-65 and linked to the one before it,
//! and every action result signed by the executor.
//!
//! The planner links each decision to the previous one of its partition (`prev_hash`, see
//! [`mapek_domain::Decision::chain_hash`]); the plan worker signs the chain hash with the
//! decision key; the executor acts only on decisions whose signature verifies and whose link
//! holds; a witness signs where each chain ends, apart from the stream; the executor signs each
//! result with its own result key (ADR 0019); `mapek audit verify` checks a whole plan stream,
//! that no chain lost its start or its end, and every result. ML-DSA (FIPS 204) is a
//! post-quantum signature: a decision log kept for years stays provable.
//!
//! Signatures are randomised (hedged signing), so they are not part of what replay
//! reproduces: replay compares decisions without their signatures, and this crate checks the
//! signatures.
//!
//! # Layout
//! - [`keys`]: [`SigningKey`] and [`VerifyingKey`], generated and kept in files: the
//!   decision key and the result key.
//! - [`chain`]: [`Chain`], checking signatures and links decision by decision, one chain per
//!   plan partition.
//! - [`heads`]: [`heads::Head`], where a chain ended when the witness signed it, kept in the
//!   `MAPEK_CHAIN` bucket apart from the decisions.
//! - [`witness`]: [`witness::run`], following MAPEK_PLAN and signing each chain's head.
//! - [`ends`]: [`ends::judge`], whether each chain still has its start and its end.
//! - [`results`]: what a result's signature signs, and [`results::Rules`], what the audit
//!   requires of each result.
//! - [`audit`]: [`audit::verify`], the whole MAPEK_PLAN stream through a [`Chain`], then
//!   [`ends::judge`], then every result in MAPEK_EXECUTE through [`results::Rules`].
//! - [`error`]: what can go wrong, [`AuditError`].

pub mod audit;
pub mod chain;
pub mod ends;
pub mod error;
pub mod heads;
pub mod keys;
pub mod results;
pub mod witness;

pub use chain::{Broken, Chain};
pub use error::AuditError;
pub use keys::{SigningKey, VerifyingKey};
