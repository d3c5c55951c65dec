//! `mapek approve` records an approval the executor waits for, and refuses a bad id.

mod common;

use common::{mapek, run, stderr, stdout};
use mapek_testkit::server_with_streams;

#[tokio::test]
async fn an_approval_is_recorded_with_its_approver() {
    let (server, js) = server_with_streams().await;
    let mut approve = mapek(&server.url());
    approve.args([
        "approve",
        "0123456789abcdef0123456789abcdef",
        "--by",
        "alice",
    ]);
    let out = run(approve);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("approved 0123456789abcdef0123456789abcdef (by alice)"));
    let kv = mapek_loop::execute::approvals(&js).await.unwrap();
    let who = mapek_loop::execute::approver(&kv, "0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(who.as_deref(), Some("alice"));

    let mut bad = mapek(&server.url());
    bad.args(["approve", "not a decision!"]);
    let out = run(bad);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a decision!"), "{}", stderr(&out));
}
