//! The actuator protocol: commands to node agents over NATS request/reply.
//!
//! The executor sends a [`Command`] to `mapek.cmd.<node>` and waits for one [`CommandReply`];
//! the node's agent (a real one, or the mesh simulator's) applies the action and answers.
//! Both are JSON on the wire, so an agent in any language can answer with a few lines:
//!
//! ```text
//! request  mapek.cmd.n17  {"decision_id":"d1","action":{"kind":"reroute","peer":"n4","params":{}}}
//! reply                   {"ok":true,"detail":"n17 routes around n4"}
//! ```
//!
//! Commands are core NATS, not JetStream: a command is an order for now, and a stored one
//! replayed later would act twice. What was ordered and what came of it is recorded by the
//! executor as an `ActionResult` on `mapek.execute.<node>`.

use std::time::Duration;

use async_nats::client::{Request, RequestErrorKind};
use futures::StreamExt;
use mapek_domain::{Action, NodeId};
use serde::{Deserialize, Serialize};

use crate::BusError;

/// The subject prefix of commands: `mapek.cmd.<node>`.
pub const PREFIX: &str = "mapek.cmd";

/// The subject a node's commands are sent to.
pub fn subject(node: &NodeId) -> String {
    format!("{PREFIX}.{node}")
}

/// An order to one node agent: apply this action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// The decision that ordered it, so the agent can log it and recognise a retry of the
    /// same order.
    pub decision_id: String,
    /// What to do; the node is the one the subject names.
    pub action: Action,
}

/// A node agent's answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandReply {
    /// Whether the agent applied the action.
    pub ok: bool,
    /// What it did, or why it could not, in one readable sentence.
    pub detail: String,
}

impl CommandReply {
    /// An applied action, with what was done.
    pub fn applied(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// A refused or failed action, with why.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Sends `cmd` to `node`'s agent and waits up to `timeout` for its reply.
///
/// No agent listening, no answer in time, and an answer that is not a [`CommandReply`] are
/// all [`BusError::Publish`], with a sentence naming the node. An agent that answers
/// `ok: false` is not an error: the reply says why.
pub async fn send_command(
    client: &async_nats::Client,
    node: &NodeId,
    cmd: &Command,
    timeout: Duration,
) -> Result<CommandReply, BusError> {
    let subject = subject(node);
    let failed = |detail: String| BusError::Publish {
        subject: subject.clone(),
        detail,
    };
    let body = serde_json::to_vec(cmd).map_err(|e| failed(format!("cannot encode: {e}")))?;
    let request = Request::new().payload(body.into()).timeout(Some(timeout));
    let answer = client
        .send_request(subject.clone(), request)
        .await
        .map_err(|e| {
            failed(match e.kind() {
                RequestErrorKind::TimedOut => {
                    format!("node {node} did not answer within {timeout:?}; is its agent running?")
                }
                RequestErrorKind::NoResponders => {
                    format!("no agent answers for node {node}; is it running and connected?")
                }
                _ => e.to_string(),
            })
        })?;
    serde_json::from_slice(&answer.payload).map_err(|e| {
        failed(format!(
            "node {node} answered something that is not a reply: {e}"
        ))
    })
}

/// One command received by an agent, with where to answer it.
#[derive(Debug)]
pub struct Incoming {
    /// The node the command is for, from its subject.
    pub node: NodeId,
    /// The command, or why it does not parse (answer that with [`CommandReply::failed`]).
    pub command: Result<Command, String>,
    reply_to: Option<async_nats::Subject>,
}

impl Incoming {
    /// Answers the command. A command sent without a reply subject (a plain publish) is
    /// answered by nobody; that is not an error.
    pub async fn respond(
        &self,
        client: &async_nats::Client,
        reply: &CommandReply,
    ) -> Result<(), BusError> {
        let Some(to) = &self.reply_to else {
            return Ok(());
        };
        let failed = |detail: String| BusError::Publish {
            subject: to.to_string(),
            detail,
        };
        let body = serde_json::to_vec(reply).map_err(|e| failed(e.to_string()))?;
        client
            .publish(to.clone(), body.into())
            .await
            .map_err(|e| failed(e.to_string()))
    }
}

/// Commands arriving for one node or for all of them, as an agent receives them.
pub struct Commands {
    subscriber: async_nats::Subscriber,
}

impl Commands {
    /// Subscribes to `mapek.cmd.<node>`, or to `mapek.cmd.*` (every node) when `node` is
    /// `None`, as the mesh simulator does for all its nodes at once.
    pub async fn subscribe(
        client: &async_nats::Client,
        node: Option<&NodeId>,
    ) -> Result<Self, BusError> {
        let filter = match node {
            Some(node) => subject(node),
            None => format!("{PREFIX}.*"),
        };
        let subscriber =
            client
                .subscribe(filter.clone())
                .await
                .map_err(|e| BusError::Consumer {
                    stream: filter,
                    detail: format!("cannot subscribe to commands: {e}"),
                })?;
        Ok(Self { subscriber })
    }

    /// The next command; `None` once the connection closed for good. Messages on a subject
    /// whose last token is not a valid node id are skipped: nothing could act on them.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let msg = self.subscriber.next().await?;
            let Some(node) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|n| NodeId::new(n).ok())
            else {
                continue;
            };
            let command = serde_json::from_slice::<Command>(&msg.payload)
                .map_err(|e| format!("not a command: {e}"));
            return Some(Incoming {
                node,
                command,
                reply_to: msg.reply,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mapek_domain::ActionKind;

    use super::*;

    #[test]
    fn a_command_is_plain_json_on_the_wire() {
        let cmd = Command {
            decision_id: "d1".into(),
            action: Action {
                kind: ActionKind::Reroute,
                peer: Some(NodeId::new("n4").unwrap()),
                service: None,
                params: BTreeMap::new(),
            },
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(
            json,
            r#"{"decision_id":"d1","action":{"kind":"reroute","peer":"n4","service":null,"params":{}}}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
        assert_eq!(subject(&NodeId::new("n17").unwrap()), "mapek.cmd.n17");
    }
}
