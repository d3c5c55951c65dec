//! mapek's readers (`mapek subscribe`, replay, audit, a worker's rebuild) read a stream by
//! batched direct gets: in stream order, through a subject filter, from a sequence or a time,
//! across deleted messages, following what is stored later, and on a cluster from whichever
//! replica answers, without ever making a consumer.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use mapek_bus::StartAt;
use mapek_bus::direct::{self, Reader};
use mapek_testkit::{NatsCluster, NatsServer};

/// A stream `T` on `t.>` that allows direct gets, with `replicas` copies; on a cluster, once
/// it has elected its meta leader (asked again for up to 30 s).
async fn stream_t(js: &jetstream::Context, replicas: usize) -> stream::Stream {
    let config = stream::Config {
        name: "T".into(),
        subjects: vec!["t.>".into()],
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(t) => return t,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("creating T: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("creating T: {e}"),
        }
    }
}

/// Publishes `n` messages, alternately on `t.a` and `t.b`, each body its number.
async fn publish(js: &jetstream::Context, n: usize) {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let subject = if i % 2 == 0 { "t.a" } else { "t.b" };
        acks.push(
            js.publish(subject, Bytes::from(i.to_string()))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Everything `reader` reads up to `last`: (sequence, body, pending).
async fn read_through(reader: &mut Reader, last: u64) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    while let Some(m) = reader.next_through(last).await.unwrap() {
        out.push((
            m.seq,
            String::from_utf8_lossy(&m.payload).into_owned(),
            m.pending,
        ));
    }
    out
}

async fn connect(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

#[tokio::test]
async fn a_reader_reads_in_order_through_a_filter_across_gaps_and_makes_no_consumer() {
    let server = NatsServer::start();
    let js = connect(&server.url()).await;
    let mut t = stream_t(&js, 1).await;
    publish(&js, 1500).await;
    for seq in [3, 5, 1001] {
        t.delete_message(seq).await.unwrap();
    }

    // More than a batch, one subject of two, the deleted messages skipped.
    let mut reader = Reader::open(&js, "T", "t.a", StartAt::All).await.unwrap();
    assert_eq!(reader.last_at_open(), 1500);
    let read = read_through(&mut reader, 1500).await;
    let expected: Vec<u64> = (1..=1500)
        .step_by(2)
        .filter(|s| ![3, 5, 1001].contains(s))
        .collect();
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), expected);
    assert!(
        read.iter()
            .all(|(seq, body, _)| *body == (seq - 1).to_string())
    );
    let pending: Vec<u64> = read.iter().map(|r| r.2).collect();
    assert_eq!(pending.first(), Some(&(expected.len() as u64 - 1)));
    assert_eq!(pending.last(), Some(&0));

    // From a sequence, and from a time.
    let mut from_seq = Reader::open(&js, "T", "t.>", StartAt::Sequence(1400))
        .await
        .unwrap();
    assert_eq!(read_through(&mut from_seq, 1500).await.len(), 101);
    let later = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&js, 4).await;
    let mut since = Reader::open(&js, "T", "t.b", StartAt::Since(later))
        .await
        .unwrap();
    let read = read_through(&mut since, 1504).await;
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), [1502, 1504]);

    assert_eq!(t.info().await.unwrap().state.consumer_count, 0);
}

#[tokio::test]
async fn a_reader_follows_what_is_stored_after_it_opened() {
    let server = NatsServer::start();
    let js = connect(&server.url()).await;
    stream_t(&js, 1).await;
    publish(&js, 3).await;
    let mut reader = Reader::open(&js, "T", "t.a", StartAt::New).await.unwrap();
    assert!(reader.next_stored().await.unwrap().is_none());

    let later = js.clone();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&later, 2).await; // t.a at sequence 4, t.b at 5
    });
    let next = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("what is stored later arrives")
        .unwrap();
    assert_eq!((next.seq, next.subject.as_str()), (4, "t.a"));
    publisher.await.unwrap();
}

#[tokio::test]
async fn a_buckets_keys_are_read_in_one_request_with_deletions_marked() {
    let server = NatsServer::start();
    let js = connect(&server.url()).await;
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "K".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    bucket.put("a", "1".into()).await.unwrap();
    bucket.put("a", "2".into()).await.unwrap();
    bucket.put("b.c", "3".into()).await.unwrap();
    bucket.put("d", "4".into()).await.unwrap();
    bucket.delete("d").await.unwrap();

    let entries = direct::last_per_subject(&js, "KV_K", "$KV.K.>")
        .await
        .unwrap();
    let live: Vec<(String, String)> = entries
        .iter()
        .filter(|e| !direct::is_deleted(e))
        .map(|e| {
            let body = String::from_utf8_lossy(&e.payload).into_owned();
            (e.subject.clone(), body)
        })
        .collect();
    assert_eq!(
        live,
        [
            ("$KV.K.a".to_owned(), "2".to_owned()),
            ("$KV.K.b.c".to_owned(), "3".to_owned())
        ]
    );
    assert_eq!(entries.len(), 3, "the deletion of d is read, and marked");
}

#[tokio::test]
async fn a_reader_on_any_server_of_a_cluster_reads_everything_stored() {
    let cluster = NatsCluster::start(3);
    let js = connect(&cluster.node_url(0)).await;
    stream_t(&js, 3).await;
    publish(&js, 2000).await;
    for i in 0..cluster.len() {
        // Each server answers from its own replica, which may lag behind the leader.
        let js = connect(&cluster.node_url(i)).await;
        let mut reader = Reader::open(&js, "T", "t.>", StartAt::All).await.unwrap();
        let last = reader.last_at_open();
        assert_eq!(last, 2000);
        let read = read_through(&mut reader, last).await;
        assert_eq!(read.len(), 2000, "read through server {i}");
        assert!(read.windows(2).all(|w| w[0].0 + 1 == w[1].0));
    }
}
