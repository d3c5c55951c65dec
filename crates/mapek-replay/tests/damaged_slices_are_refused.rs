//! A damaged slice file is refused with an error naming the line, or replays what can be read
//! of it: never a panic. Damaged copies (`mapek_testkit::mutate`, seeded) of golden replays
//! are read and, when they read, verified; so are slices whose messages are damaged.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mapek_replay::slice::Slice;
use mapek_replay::{Range, Source, verify};
use mapek_testkit::mutate::{Mutator, never_panics};

#[test]
fn damaged_slices_are_refused_or_replayed_without_panicking() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay/degraded-link.slice");
    let valid = vec![std::fs::read(golden).unwrap()];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let verified = AtomicUsize::new(0);
    never_panics(&valid, 300, |bytes| {
        let Ok(slice) = Slice::read("damaged.slice", bytes) else {
            return;
        };
        let source = Source::Slice(Arc::new(slice));
        let _ = runtime.block_on(verify(&source, Range::ALL, None));
        verified.fetch_add(1, Ordering::Relaxed);
    });
    // Damage inside a body's base64 still reads as a slice: those reach the decoders.
    let verified = verified.into_inner();
    assert!(
        verified > 10,
        "only {verified} damaged slices were read and verified"
    );
}

#[test]
fn a_slice_with_damaged_messages_replays_the_rest_without_panicking() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay/cpu-hog.slice");
    let valid = Slice::open(&golden).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut mutator = Mutator::new(7);
    for case in 0..200 {
        let mut slice = valid.clone();
        for _ in 0..8 {
            let at = mutator.below(slice.records.len());
            let record = &mut slice.records[at];
            record.body = mutator.damage(&record.body).into();
        }
        let source = Source::Slice(Arc::new(slice));
        let result = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(verify(&source, Range::ALL, None))
        }));
        assert!(result.is_ok(), "case {case} panicked");
    }
}
