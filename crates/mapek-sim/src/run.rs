//! The simulator on the bus: publish each tick, answer commands.

use std::future::Future;
use std::time::Duration;

use mapek_bus::command::{CommandReply, Commands};
use mapek_bus::{JetStream, PublishReport, Publisher};
use mapek_domain::NodeId;
use tokio::time::MissedTickBehavior;

use crate::{Mesh, SimError};

/// What a run came to.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Ticks simulated.
    pub ticks: u64,
    /// Commands answered (applied or refused).
    pub commands: u64,
    /// Commands the mesh refused (`ok: false`).
    pub refused: u64,
    /// The telemetry publishes.
    pub published: PublishReport,
}

/// Runs `mesh` at `hz` ticks a second until `shutdown` completes: each tick's telemetry is
/// published through a pipelined [`Publisher`], and every command on `mapek.cmd.*` is
/// applied to the mesh and answered with a [`CommandReply`].
///
/// Tick `k` carries event time `start_ms + k * period`, with the period `1000 / hz` ms
/// rounded to whole milliseconds (at least 1), so a run with the same seed, start and
/// commands publishes the same events. Wall-clock pacing comes from a tokio interval; the
/// model never reads the clock. A late slice fires at once, so no event time is
/// missing.
pub async fn run(
    js: JetStream,
    client: async_nats::Client,
    mesh: Mesh,
    hz: f64,
    start_ms: i64,
    shutdown: impl Future,
) -> Result<RunReport, SimError> {
    if !(hz.is_finite() && hz > 0.0) {
        return Err(SimError::Config(format!(
            "hz is {hz}, but must be more than 0"
        )));
    }
    let period_ms = ((1000.0 / hz).round() as i64).max(1);
    run_faster(js, client, mesh, hz, period_ms, start_ms, shutdown).await
}

/// Like [`run`], but each tick advances event time by `event_period_ms` while ticks come `hz`
/// times a wall-clock second: with `hz` 10 and a 500 ms event period, simulated time runs five
/// times faster than the clock (the demo's way to show a minute of faults in a few seconds).
pub async fn run_faster(
    js: JetStream,
    client: async_nats::Client,
    mut mesh: Mesh,
    hz: f64,
    event_period_ms: i64,
    start_ms: i64,
    shutdown: impl Future,
) -> Result<RunReport, SimError> {
    if !(hz.is_finite() && hz > 0.0) || event_period_ms < 1 {
        return Err(SimError::Config(format!(
            "hz {hz} and event period {event_period_ms} ms must be more than 0"
        )));
    }
    let period_ms = event_period_ms;
    let wall_period = Duration::from_secs_f64(1.0 / hz);
    let mut commands = Commands::subscribe(&client, None).await?;
    let mut publisher = Publisher::new(js);
    // Real nodes report at their own moment in the period: publish a tick's samples in slices
    // of at least a millisecond each, up to 100 a tick.
    let slices = (wall_period.as_millis() as u32).clamp(1, 100);
    let mut interval = tokio::time::interval(wall_period / slices);
    let (mut slice, mut per_slice, mut pending) = (0u32, 0usize, std::collections::VecDeque::new());
    // A late slice fires at once: event time comes from the tick count, never the clock.
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut report = RunReport::default();
    let mut answered = Answered::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {
                // Real nodes do not all report at the same instant: a tick's samples go out
                // over the tick, a slice at a time.
                if slice == 0 {
                    let t_ms = start_ms + report.ticks as i64 * period_ms;
                    report.ticks += 1;
                    pending.extend(mesh.tick(t_ms));
                    per_slice = pending.len().div_ceil(slices as usize);
                }
                for sample in pending.drain(..per_slice.min(pending.len())) {
                    publisher.publish(&sample).await?;
                }
                slice = (slice + 1) % slices;
            }
            incoming = commands.next() => {
                let Some(incoming) = incoming else { break };
                let reply = match &incoming.command {
                    Ok(cmd) => answered.reply(&incoming.node, &cmd.decision_id, || {
                        match mesh.apply(&cmd.action, &incoming.node) {
                            Ok(done) => CommandReply::applied(done),
                            Err(why) => CommandReply::failed(why),
                        }
                    }),
                    Err(why) => CommandReply::failed(why.clone()),
                };
                tracing::info!(node = %incoming.node, ok = reply.ok, detail = %reply.detail, "command");
                report.commands += 1;
                report.refused += u64::from(!reply.ok);
                incoming.respond(&client, &reply).await?;
            }
        }
    }
    // The last tick is published whole.
    for sample in pending.drain(..) {
        publisher.publish(&sample).await?;
    }
    report.published = publisher.finish().await;
    Ok(report)
}

/// How many decisions' replies the simulator remembers.
const REMEMBERED: usize = 10_000;

/// The replies each node gave, by decision id: a command sent again (an executor that
/// crashed after sending it and before storing its result sends it again) is answered as
/// before and not applied twice, as every agent must.
#[derive(Default)]
struct Answered {
    replies: std::collections::HashMap<(NodeId, String), CommandReply>,
    order: std::collections::VecDeque<(NodeId, String)>,
}

impl Answered {
    /// The reply `node` gave to `decision_id` before, or else `apply`'s, remembered.
    fn reply(
        &mut self,
        node: &NodeId,
        decision_id: &str,
        apply: impl FnOnce() -> CommandReply,
    ) -> CommandReply {
        let key = (node.clone(), decision_id.to_owned());
        if let Some(reply) = self.replies.get(&key) {
            return reply.clone();
        }
        let reply = apply();
        if self.order.len() == REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.replies.remove(&oldest);
        }
        self.order.push_back(key.clone());
        self.replies.insert(key, reply.clone());
        reply
    }
}
