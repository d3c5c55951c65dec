//! Partition leases: several copies of a phase share its partitions, one owner each.
//!
//! A lease is a key in the JetStream key-value bucket `MAPEK_LEASES` (`analyze.p3`), created
//! only if absent and renewed by revision, so two workers can never both hold it. The bucket
//! forgets a key `ttl` after its last renewal: a worker that dies loses its leases within one
//! `ttl`, and another worker takes its partitions from where their durable consumers stopped.
//!
//! On a cluster the bucket may not answer for a while (a leader election, a lost server). A
//! worker then keeps its leases and its work, retrying ([`crate::retry`]), and gives a lease up
//! only once it has gone two thirds of `ttl` without a renewal the server confirmed: a third
//! of `ttl` before the key can expire and another worker take it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Store, UpdateErrorKind};
use mapek_bus::{BusError, JetStream, direct};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::retry::{self, failed_for_now};
use crate::stage::{Stage, StageConfig, StageStats, run_stage};

/// The bucket of partition leases.
pub const BUCKET: &str = mapek_bus::progress::LEASE_BUCKET;
/// How long a lease outlives its last renewal.
pub const DEFAULT_TTL: Duration = Duration::from_secs(6);

fn failed(detail: String) -> BusError {
    BusError::Consumer {
        stream: format!("KV_{BUCKET}"),
        detail,
    }
}

/// Leases held by one worker process.
pub struct Leases {
    js: JetStream,
    kv: Store,
    owner: String,
    ttl: Duration,
    /// Each lease held: its revision, and when the request of its last confirmed renewal was
    /// sent (the key expires no sooner than `ttl` after that).
    held: BTreeMap<String, (u64, Instant)>,
    /// The live workers counted last, for when the bucket does not answer.
    alive: usize,
}

/// What [`Leases::renew`] found.
#[derive(Debug, Default)]
pub struct Renewal {
    /// The leases lost (taken over, or unrenewed for too long): their work must stop.
    pub lost: Vec<String>,
    /// Whether the bucket answered every renewal; when it did not, the caller skips what else
    /// it would ask of it until the next tick.
    pub answered: bool,
}

/// How one lease's renewal went.
enum RenewOne {
    /// Renewed, or found renewed: the new revision and when its request was sent.
    Kept((u64, Instant)),
    /// No answer: the lease as it was.
    Unanswered((u64, Instant)),
    /// Somebody else holds it now.
    Lost,
}

impl Leases {
    /// Opens the lease bucket (creating it with `ttl` if missing) for the worker `owner`.
    pub async fn open(js: &JetStream, owner: &str, ttl: Duration) -> Result<Self, BusError> {
        let config = kv::Config {
            bucket: BUCKET.into(),
            description: "Which worker owns which phase partition".into(),
            history: 1,
            max_age: ttl,
            ..Default::default()
        };
        let kv = mapek_bus::buckets::open_or_create(js, config).await?;
        Ok(Self {
            js: js.clone(),
            kv,
            owner: owner.to_owned(),
            ttl,
            held: BTreeMap::new(),
            alive: 1,
        })
    }

    /// Takes the lease `key` if nobody holds it; `false` if somebody does.
    pub async fn try_acquire(&mut self, key: &str) -> Result<bool, BusError> {
        let sent = Instant::now();
        let created = self.bounded(self.kv.create(key, self.owner.clone().into()));
        match created.await {
            Ok(Ok(revision)) => {
                self.held.insert(key.to_owned(), (revision, sent));
                Ok(true)
            }
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Ok(Err(e)) => Err(failed(format!("cannot take lease {key}: {e}"))),
            Err(unanswered) => Err(failed(format!("cannot take lease {key}: {unanswered}"))),
        }
    }

    /// `request`, given up after a sixth of `ttl`: a bucket that does not answer (an election)
    /// must not hold up the renewals that decide whether a lease is still ours.
    async fn bounded<T>(&self, request: impl Future<Output = T>) -> Result<T, String> {
        let limit = self.ttl / 6;
        tokio::time::timeout(limit, request)
            .await
            .map_err(|_| format!("no answer within {} ms", limit.as_millis()))
    }

    /// Renews every lease held, all at once; returns the keys that were lost: taken over, or
    /// not renewed for two thirds of `ttl` (see `Leases::keep_for`; such a lease is given up
    /// without asking). A renewal that fails for another reason (no answer during an
    /// election) keeps the lease, to be renewed at the next call; `answered` says whether
    /// every renewal was answered.
    pub async fn renew(&mut self) -> Renewal {
        let (expired, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, (_, renewed))| renewed.elapsed() >= self.keep_for());
        let mut lost: Vec<String> = expired.into_iter().map(|(key, _)| key).collect();
        let renewals = live.iter().map(|(key, held)| self.renew_one(key, *held));
        let mut answered = true;
        for ((key, _), outcome) in live.iter().zip(futures::future::join_all(renewals).await) {
            match outcome {
                RenewOne::Kept(held) => {
                    self.held.insert(key.clone(), held);
                }
                RenewOne::Unanswered(held) => {
                    answered = false;
                    self.held.insert(key.clone(), held);
                }
                RenewOne::Lost => lost.push(key.clone()),
            }
        }
        Renewal { lost, answered }
    }

    /// Renews one lease held at `revision`, last confirmed by a request sent at `renewed`.
    async fn renew_one(&self, key: &str, (revision, renewed): (u64, Instant)) -> RenewOne {
        let sent = Instant::now();
        let update = self.kv.update(key, self.owner.clone().into(), revision);
        match self.bounded(update).await {
            Ok(Ok(r)) => RenewOne::Kept((r, sent)),
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                match self.bounded(self.still_mine(key)).await {
                    Ok(Some(r)) => RenewOne::Kept((r, sent)),
                    Ok(None) => RenewOne::Lost,
                    Err(e) => self.unanswered(key, &e, (revision, renewed)),
                }
            }
            Ok(Err(e)) => self.unanswered(key, &e, (revision, renewed)),
            Err(e) => self.unanswered(key, &e, (revision, renewed)),
        }
    }

    /// A renewal of `key` that got no answer: counted, and the lease kept as it was.
    fn unanswered(
        &self,
        key: &str,
        error: &dyn std::fmt::Display,
        held: (u64, Instant),
    ) -> RenewOne {
        failed_for_now("lease", "renew", &format!("{key}: {error}"));
        RenewOne::Unanswered(held)
    }

    /// How long a lease is kept without a confirmed renewal: two thirds of `ttl`. Leases are
    /// renewed every third of `ttl`, so the lease is given up (and its work stopped) at a
    /// renewal at least a third of `ttl` before the server can let the key expire and
    /// another worker take it: two workers never run one partition at once.
    fn keep_for(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// After a renewal was refused for its revision: the key's revision if it still names
    /// this worker (an earlier renewal was stored though its answer was lost), else `None`.
    async fn still_mine(&self, key: &str) -> Option<u64> {
        match self.kv.entry(key).await {
            Ok(Some(entry))
                if entry.operation == kv::Operation::Put
                    && entry.value.as_ref() == self.owner.as_bytes() =>
            {
                Some(entry.revision)
            }
            _ => None,
        }
    }

    /// Gives every lease back, so another worker need not wait for them to expire.
    pub async fn release_all(&mut self) {
        for (key, (revision, _)) in std::mem::take(&mut self.held) {
            let _ = self.kv.update(&key, Vec::new().into(), revision).await;
            let _ = self.kv.purge(&key).await;
        }
    }

    /// The keys held.
    pub fn held(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(String::as_str)
    }

    /// Gives one lease back.
    pub async fn release(&mut self, key: &str) {
        if self.held.remove(key).is_some() {
            let _ = self.kv.purge(key).await;
        }
    }

    /// Says this worker is alive for `phase` (a key that expires with the leases) and returns
    /// how many workers of `phase` are alive, this one included. When the bucket does not
    /// answer, the failure is counted and the count of the last answer is returned.
    pub async fn heartbeat(&mut self, phase: &str) -> usize {
        match self.count_alive(phase).await {
            Ok(alive) => self.alive = alive,
            Err(e) => failed_for_now(phase, "heartbeat", &e),
        }
        self.alive
    }

    async fn count_alive(&self, phase: &str) -> Result<usize, BusError> {
        self.bounded(self.put_and_count(phase))
            .await
            .map_err(|e| failed(format!("heartbeat: {e}")))?
    }

    async fn put_and_count(&self, phase: &str) -> Result<usize, BusError> {
        let prefix = format!("{phase}.worker.");
        self.kv
            .put(format!("{prefix}{}", self.owner), self.owner.clone().into())
            .await
            .map_err(|e| failed(format!("heartbeat: {e}")))?;
        let workers = format!("$KV.{BUCKET}.{prefix}>");
        let alive = direct::last_per_subject(&self.js, &format!("KV_{BUCKET}"), &workers)
            .await
            .map_err(|e| failed(format!("listing workers: {e}")))?
            .iter()
            .filter(|entry| !direct::is_deleted(entry))
            .count();
        Ok(alive.max(1))
    }

    /// Opens the lease bucket as [`Leases::open`] does, retrying while the server does not
    /// answer; `None` if `shutdown` completes first.
    async fn open_until_ok(
        js: &JetStream,
        phase: &str,
        owner: &str,
        ttl: Duration,
        shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Self> {
        retry::until_ok(
            phase,
            "open leases",
            || Leases::open(js, owner, ttl),
            shutdown,
        )
        .await
    }

    /// Takes the lease `key` if it is free; a failed request counts as not taken, and is
    /// logged and counted.
    async fn acquire_or_count(&mut self, phase: &str, key: &str) -> bool {
        self.try_acquire(key).await.unwrap_or_else(|e| {
            failed_for_now(phase, "take lease", &e);
            false
        })
    }
}

/// A running piece of work: how to stop it, and its task.
type Running<T = StageStats> = (oneshot::Sender<()>, JoinHandle<Result<T, BusError>>);

/// Runs one stage per partition of `phase` that this process can lease, until `shutdown`.
///
/// Every `ttl / 3` it renews its leases, stops the stages whose lease it lost, counts the
/// live workers of `phase`, gives back partitions beyond its fair share (the partition count
/// divided by the live workers, rounded up) and takes free ones up to it. `make` builds a
/// fresh stage for a partition; the stage rebuilds its state from the log before it takes new
/// input.
pub async fn run_partitioned<S, F>(
    js: JetStream,
    phase: &str,
    partitions: u32,
    owner: String,
    ttl: Duration,
    make: F,
    shutdown: impl Future<Output = ()>,
) -> Result<StageStats, BusError>
where
    S: Stage + Send + 'static,
    F: Fn(u32) -> S,
{
    let mut total = StageStats::default();
    let work = |p: u32, stopped: oneshot::Receiver<()>| {
        let config = StageConfig::partition_of(phase, p, partitions);
        run_stage(
            js.clone(),
            make(p),
            config,
            mapek_bus::until_stopped(stopped),
        )
    };
    let sharing = Sharing {
        phase,
        partitions,
        owner,
        ttl,
    };
    share_partitions(&js, sharing, work, |s| add(&mut total, s), shutdown).await?;
    Ok(total)
}

/// How a phase's partitions are shared: which phase, how many partitions, who this worker
/// is, and how long its leases outlive it.
#[derive(Clone, Debug)]
pub struct Sharing<'a> {
    /// The phase (`execute`): lease keys are `<phase>.p<n>`.
    pub phase: &'a str,
    /// How many partitions the phase has.
    pub partitions: u32,
    /// This worker's name.
    pub owner: String,
    /// How long a lease outlives its last renewal.
    pub ttl: Duration,
}

/// Runs `work(partition, stopped)` for every partition of `sharing.phase` this process can
/// lease, as [`run_partitioned`] does for stages, until `shutdown`; `done` is handed what each
/// piece of work returned when it ends (stopped, lost, or failed: a failed one is retried at
/// the next tick).
pub async fn share_partitions<T, W, Fut>(
    js: &JetStream,
    sharing: Sharing<'_>,
    work: W,
    mut done: impl FnMut(Result<Result<T, BusError>, tokio::task::JoinError>),
    shutdown: impl Future<Output = ()>,
) -> Result<(), BusError>
where
    W: Fn(u32, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = Result<T, BusError>> + Send + 'static,
    T: Send + 'static,
{
    let Sharing {
        phase,
        partitions,
        owner,
        ttl,
    } = sharing;
    tokio::pin!(shutdown);
    let Some(mut leases) = Leases::open_until_ok(js, phase, &owner, ttl, shutdown.as_mut()).await
    else {
        return Ok(());
    };
    let mut running: BTreeMap<u32, Running<T>> = BTreeMap::new();
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        let renewal = leases.renew().await;
        for key in renewal.lost {
            tracing::warn!(lease = %key, "lost a partition lease; stopping that partition");
            if let Some(p) = key.rsplit(".p").next().and_then(|p| p.parse().ok())
                && let Some((_, task)) = running.remove(&p)
            {
                done(abort(task).await);
            }
        }
        if !renewal.answered {
            // The bucket does not answer: ask nothing more of it until the next renewal.
            continue;
        }
        let share = (partitions as usize).div_ceil(leases.heartbeat(phase).await);
        while running.len() > share {
            let (p, (stop, task)) = running.pop_last().expect("more than share > 0");
            let _ = stop.send(());
            done(task.await);
            leases.release(&format!("{phase}.p{p}")).await;
        }
        for p in 0..partitions {
            if running.len() >= share || running.contains_key(&p) {
                continue;
            }
            match leases.try_acquire(&format!("{phase}.p{p}")).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    // Not answered: the rest wait for the next tick, after the renewals.
                    failed_for_now(phase, "take lease", &e);
                    break;
                }
            }
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(work(p, stopped));
            running.insert(p, (stop, task));
        }
        // A piece of work that failed (its consumer or its publishes, while a stream had no
        // leader, say) gives its partition back, to be retried at the next tick.
        let finished: Vec<u32> = running
            .iter()
            .filter(|(_, (_, task))| task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in finished {
            let (_, task) = running.remove(&p).expect("listed above");
            let result = task.await;
            if let Ok(Err(e)) = &result {
                failed_for_now(phase, "partition", &format!("p{p}: {e}"));
            }
            done(result);
            leases.release(&format!("{phase}.p{p}")).await;
        }
    }
    for (_, (stop, task)) in std::mem::take(&mut running) {
        let _ = stop.send(());
        done(task.await);
    }
    leases.release_all().await;
    let _ = leases.kv.purge(format!("{phase}.worker.{owner}")).await;
    Ok(())
}

/// Stops work whose lease was lost at once, wherever it is: another worker may own its
/// partition now, so it must not publish or acknowledge anything more. What it took and did
/// not acknowledge is delivered again to the new owner.
async fn abort<T>(task: JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
    task.abort();
    task.await
}

fn add(
    total: &mut StageStats,
    result: Result<Result<StageStats, BusError>, tokio::task::JoinError>,
) {
    match result {
        Ok(Ok(s)) => total.add(&s),
        Ok(Err(e)) => tracing::error!(error = %e, "a partition stage stopped"),
        Err(e) if e.is_cancelled() => tracing::warn!("a partition stage stopped: lease lost"),
        Err(e) => tracing::error!(error = %e, "a partition stage panicked"),
    }
}

/// Runs `work` in one process at a time among every process that calls this with the same
/// `name`: the one holding the lease `name` runs it, the others stand by and take over within
/// `ttl` when it dies. Work that fails gives the lease back and is started again at a later
/// tick (logged and counted in `mapek_retries_total`). Returns when `shutdown` completes, or
/// `work` ends without an error.
///
/// The evaluator, and the executor without Redis, run this way: their pending evaluations and
/// interlocks are kept in process, so two copies at once would each see half the picture.
pub async fn run_singleton<W, Fut, T>(
    js: JetStream,
    name: &str,
    owner: String,
    ttl: Duration,
    work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<T>, BusError>
where
    W: Fn(oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = Result<T, BusError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::pin!(shutdown);
    let Some(mut leases) = Leases::open_until_ok(&js, name, &owner, ttl, shutdown.as_mut()).await
    else {
        return Ok(None);
    };
    let mut tick = tokio::time::interval(ttl / 3);
    let mut running: Option<Running<T>> = None;
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => break None,
        }
        if !leases.renew().await.lost.is_empty()
            && let Some((stop, task)) = running.take()
        {
            tracing::warn!(lease = name, "lost the lease; standing by");
            drop(stop);
            let _ = abort(task).await;
        }
        if running.is_none() && leases.acquire_or_count(name, name).await {
            let (stop, stopped) = oneshot::channel();
            running = Some((stop, tokio::spawn(work(stopped))));
        }
        if running.as_ref().is_some_and(|(_, task)| task.is_finished()) {
            let (_, task) = running.take().expect("checked above");
            leases.release_all().await;
            match task.await {
                // Work that failed (its stream had no leader, its server went away) starts
                // again at a later tick, in this process or another.
                Ok(Err(e)) => failed_for_now(name, "restart", &e),
                ended => break Some(ended),
            }
        }
    };
    let result = match (outcome, running.take()) {
        (Some(done), _) => Some(done),
        (None, Some((stop, task))) => {
            let _ = stop.send(());
            Some(task.await)
        }
        (None, None) => None,
    };
    leases.release_all().await;
    match result {
        Some(Ok(Ok(value))) => Ok(Some(value)),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(failed(format!("{name} panicked: {e}"))),
        None => Ok(None),
    }
}
