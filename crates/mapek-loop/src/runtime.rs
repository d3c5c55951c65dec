//! The runtime the workers run on.
//!
//! nats-server does most of the loop's work: for every telemetry event it stores, it also
//! delivers it to analyze, and on a small machine the two share the cores. With a worker
//! thread per core, the loop's threads wake each other across the cores the server needs:
//! on 2 cores, one thread spent a fifth less of the loop's CPU per event, with the same cycle
//! time and a sustained rate as high or a little higher (ADR 0013, docs/performance.md). So
//! mapek runs on half the cores unless told otherwise.

/// How many worker threads the loop's runtime gets without `TOKIO_WORKER_THREADS`: half the
/// machine's cores (as the process may use them), at least one.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A multi-threaded tokio runtime with every driver, on `TOKIO_WORKER_THREADS` threads when
/// that is set (tokio reads it), else on [`default_worker_threads`].
///
/// # Errors
/// When the runtime cannot start its threads.
///
/// # Panics
/// When `TOKIO_WORKER_THREADS` is set but not a positive number (tokio's own check).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(default_worker_threads());
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_takes_half_the_cores_unless_told_otherwise() {
        let expected = match std::env::var("TOKIO_WORKER_THREADS") {
            Ok(n) => n.parse().expect("TOKIO_WORKER_THREADS is a number"),
            Err(_) => default_worker_threads(),
        };
        // Half, rounded down, and never none: 1 on 1 or 2 cores, 2 on 4 or 5.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = default_worker_threads();
        assert!(default >= 1 && default * 2 <= cores.max(2) && default * 2 + 2 > cores);
        let runtime = build().expect("a runtime");
        assert_eq!(runtime.metrics().num_workers(), expected);
    }
}
