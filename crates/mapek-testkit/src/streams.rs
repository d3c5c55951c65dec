//! A fresh nats-server with mapek's streams applied, the way most tests begin.

use mapek_bus::JetStream;

use crate::NatsServer;

/// A fresh nats-server with mapek's streams, mapping telemetry into partitions as the configs
/// mapek ships do (two monitor streams).
pub async fn server_with_streams() -> (NatsServer, JetStream) {
    with_streams(NatsServer::start()).await
}

/// A fresh nats-server without the telemetry mapping, with mapek's streams: telemetry in one
/// stream, `MAPEK_MONITOR`.
pub async fn server_with_one_telemetry_stream() -> (NatsServer, JetStream) {
    with_streams(NatsServer::start_without_mapping()).await
}

/// Applies mapek's streams on `server`.
pub async fn with_streams(server: NatsServer) -> (NatsServer, JetStream) {
    let js = mapek_bus::connect(&server.url()).await.expect("connect");
    mapek_bus::streams::apply(&js, &mapek_bus::streams::builtin())
        .await
        .expect("apply the streams");
    (server, js)
}
