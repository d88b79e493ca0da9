//! Confirmed acks, in batches. A key of an ordered group goes on only once its event's
//! ack has reached the server: an ack lost in a disconnect would bring the event back
//! after its ack deadline, after the key's next one. Asking the server to answer each
//! ack (a request on the ack subject) costs a reply, an inbox lookup and a wake-up per
//! event; instead acks are sent as they are, and a key waits for the next *sync*: a
//! request the server answers at once with "no responders" (to a fresh inbox subject no
//! one listens on). The server reads a connection in order, so its answer means every
//! ack written before it has been taken in; one sync covers every ack that was waiting
//! for it (group commit), so under load there is about one round trip per batch, not per
//! event.
//!
//! Bound: at most [`WAITING`] callers wait for a sync at once; more wait to be queued.

use async_nats::{Client, RequestErrorKind};
use tokio::sync::{mpsc, oneshot};

use crate::send_deadline::SEND_DEADLINE;

/// Callers waiting for the next sync, at most.
const WAITING: usize = 4096;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Confirms that what this client wrote has reached the server.
#[derive(Debug, Clone)]
pub(crate) struct Syncs {
    tx: mpsc::Sender<Waiter>,
}

impl Syncs {
    /// Starts the syncing task for `client`; it ends when the last `Syncs` is dropped.
    pub(crate) fn start(client: Client) -> Self {
        let (tx, rx) = mpsc::channel(WAITING);
        tokio::spawn(run(client, rx));
        Self { tx }
    }

    /// Waits until everything this client wrote before the call has reached the server.
    pub(crate) async fn synced(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .await
            .map_err(|_| "the ack sync has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the ack sync has stopped".to_owned())?
    }
}

async fn run(client: Client, mut rx: mpsc::Receiver<Waiter>) {
    // Nobody subscribes to a fresh inbox: the server answers "no responders" itself.
    let subject = client.new_inbox();
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        let answer = tokio::time::timeout(
            SEND_DEADLINE,
            client.request(subject.clone(), bytes::Bytes::new()),
        )
        .await;
        let result = match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the server did not answer a sync within the send deadline".to_owned()),
        };
        for waiter in batch.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }
}
