//! The analyze stage: telemetry in, symptoms out, with [`Analyzer`].
//!
//! The analyzer's state is a fold of the telemetry, rebuilt on start by replaying the
//! partition's telemetry up to what the consumer acknowledged (see [`crate::stage`]).
//! Replaying all retained telemetry grows with the retention; a snapshot that records its
//! stream sequence is the planned remedy.

use mapek_domain::{Analyzer, Symptom, Telemetry};

use crate::stage::Stage;

impl Stage for Analyzer {
    type In = Telemetry;
    type Out = Symptom;

    fn step(&mut self, input: &Telemetry) -> Vec<Symptom> {
        Analyzer::step(self, input)
    }
}
