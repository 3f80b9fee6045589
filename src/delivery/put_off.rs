//! Putting tasks off in bulk: tasks put off for the same defer queue within a few
//! milliseconds travel as one message (see [`super::task::pack`]).
//!
//! A slow endpoint's backlog is put off task by task, each time its turn has not come;
//! one quorum-queue message per task made the broker's work for that endpoint as large
//! as all the useful work for the fast ones (measured: the broker's CPU doubled in the
//! slow-endpoint benchmark). Gathered per queue, the put-offs of a whole ingest batch
//! or of a returning message cost one publish and one confirm. Each caller still
//! returns only once the message holding its task is confirmed, so a put-off task is
//! durable before the message that carried it is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use tokio::sync::oneshot;

use super::task::{pack, DeliveryTask, TASKS};
use crate::broker::{Outgoing, PublishError, Publisher};
use crate::metrics::Metrics;

/// How long the first task of a message waits for others to join it.
const LINGER: Duration = Duration::from_millis(10);
/// Most tasks in one message, and most bytes of webhook bodies.
const MAX_TASKS: usize = 512;
const MAX_BYTES: usize = 1 << 20;

/// A put-off task that did not reach the broker; its message must come back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PutOffError {
    #[error("putting the delivery off failed: {0}")]
    Publish(Arc<PublishError>),
    /// The message holding the task was dropped unsent (the runtime is shutting down).
    #[error("putting the delivery off was abandoned")]
    Abandoned,
}

type Waiter = oneshot::Sender<Result<(), PutOffError>>;

#[derive(Default)]
struct Gathering {
    tasks: Vec<DeliveryTask>,
    bytes: usize,
    waiters: Vec<Waiter>,
}

/// Gathers put-off tasks per defer queue; one per process.
#[derive(Clone)]
pub struct PutOffs {
    open: Arc<Mutex<HashMap<String, Gathering>>>,
    metrics: Arc<Metrics>,
}

impl PutOffs {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            open: Arc::default(),
            metrics,
        }
    }

    /// Puts `task` into `queue`, together with whatever else is put there meanwhile;
    /// returns once the broker confirmed the message that holds it.
    pub async fn put_off(
        &self,
        publisher: &Publisher,
        queue: String,
        task: DeliveryTask,
    ) -> Result<(), PutOffError> {
        let (done, confirmed) = oneshot::channel();
        let full = {
            let mut open = self.open.lock().expect("lock not poisoned");
            let gathering = open.entry(queue.clone()).or_default();
            if gathering.tasks.is_empty() {
                // The first task of a message sends it when the linger is over. (If the
                // message filled up and left early, this sends the next one a little
                // early instead: harmless.)
                let (this, publisher, queue) = (self.clone(), publisher.clone(), queue.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    let gathered = this.open.lock().expect("lock not poisoned").remove(&queue);
                    if let Some(gathered) = gathered {
                        this.send(&publisher, &queue, gathered).await;
                    }
                });
            }
            gathering.bytes += task.body.len();
            gathering.tasks.push(task);
            gathering.waiters.push(done);
            if gathering.tasks.len() >= MAX_TASKS || gathering.bytes >= MAX_BYTES {
                open.remove(&queue)
            } else {
                None
            }
        };
        if let Some(gathered) = full {
            let (this, publisher) = (self.clone(), publisher.clone());
            tokio::spawn(async move { this.send(&publisher, &queue, gathered).await });
        }
        confirmed.await.unwrap_or(Err(PutOffError::Abandoned))
    }

    async fn send(&self, publisher: &Publisher, queue: &str, gathered: Gathering) {
        let Gathering { tasks, waiters, .. } = gathered;
        let result = match publish(publisher, queue, &tasks).await {
            Ok(messages) => {
                self.metrics.put_off_messages.inc_by(messages);
                Ok(())
            }
            Err(error) => Err(PutOffError::Publish(Arc::new(error))),
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Publishes the tasks as one message (or one each, if they cannot be packed);
/// returns how many messages that took.
async fn publish(
    publisher: &Publisher,
    queue: &str,
    tasks: &[DeliveryTask],
) -> Result<u64, PublishError> {
    let packed = if tasks.len() > 1 { pack(tasks) } else { None };
    match packed {
        Some(body) => {
            let mut headers = FieldTable::default();
            headers.insert(TASKS.into(), AMQPValue::LongLongInt(tasks.len() as i64));
            publisher
                .publish(Outgoing {
                    exchange: "",
                    routing_key: queue,
                    body: &body,
                    properties: BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_timestamp(chrono::Utc::now().timestamp() as u64)
                        .with_content_type("application/json".into())
                        .with_headers(headers),
                })
                .await?;
            Ok(1)
        }
        None => {
            publisher
                .publish_all(tasks.iter().map(|t| t.to_queue(queue)).collect())
                .await?;
            Ok(tasks.len() as u64)
        }
    }
}
