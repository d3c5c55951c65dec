//! [`Follower`]: every result or outcome stored, followed in order, to be folded into the
//! interlocks.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use mapek_bus::{BusError, JetStream, Subscriber, SubscriberConfig};
use mapek_codec::AvroEvent;

/// How long catching up with the events stored may take before it is an error.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// Every `E` stored (results in `MAPEK_EXECUTE`, outcomes in `MAPEK_KNOWLEDGE`), followed in
/// order, to be folded into the interlocks.
pub(super) struct Follower<E> {
    events: Subscriber<E>,
    stream: Stream,
    /// The stream sequence of the latest event folded.
    folded: u64,
}

impl<E: AvroEvent> Follower<E> {
    pub(super) async fn open(js: &JetStream) -> Result<Self, BusError> {
        let name = E::PHASE.stream();
        let stream = js.get_stream(name).await.map_err(|e| BusError::Consumer {
            stream: name.to_owned(),
            detail: format!("{e}; run `mapek streams apply`"),
        })?;
        let events = Subscriber::<E>::open(js, SubscriberConfig::all()).await?;
        Ok(Self {
            events,
            stream,
            folded: 0,
        })
    }

    /// Folds every event stored by now with `fold`; returns how many.
    pub(super) async fn catch_up(&mut self, mut fold: impl FnMut(&E)) -> Result<u64, BusError> {
        let name = E::PHASE.stream();
        let failed = |detail: String| BusError::Consumer {
            stream: name.to_owned(),
            detail,
        };
        let last = self
            .stream
            .info()
            .await
            .map_err(|e| failed(format!("cannot read how many events are stored: {e}")))?
            .state
            .last_sequence;
        let mut folded = 0;
        if self.folded < last {
            self.events.ask_again_now();
        }
        while self.folded < last {
            let received = tokio::time::timeout(CATCH_UP_WAIT, self.events.next())
                .await
                .map_err(|_| {
                    failed(format!(
                        "events up to {last} are stored, but none after {} arrived within {} s",
                        self.folded,
                        CATCH_UP_WAIT.as_secs()
                    ))
                })?
                .ok_or_else(|| failed("the subscription ended".into()))??;
            // What does not decode cannot be folded; no mapek worker wrote it.
            if let Ok(event) = received.event {
                fold(&event);
                folded += 1;
            }
            self.folded = received.stream_seq;
        }
        Ok(folded)
    }
}
