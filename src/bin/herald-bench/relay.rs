//! The baseline: the least a relay must do — consume a quorum queue bound to the same
//! exchange with manual acks, POST each message to every endpoint over one keep-alive
//! client, ack when all answered 2xx (nack and requeue otherwise). No database, no
//! signing, no retry schedule. Herald is reported as a ratio to it.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

/// The relay's queue, bound with `#` to the run's exchange.
pub async fn declare(channel: &Channel, queue: &str, exchange: &str) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            queue,
            exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

pub async fn delete(channel: &Channel, queue: &str) -> lapin::Result<()> {
    channel
        .queue_delete(queue, QueueDeleteOptions::default())
        .await
        .map(|_| ())
}

/// Relays until `stop`.
pub async fn run(
    connection: &Connection,
    queue: &str,
    urls: Arc<Vec<String>>,
    prefetch: u16,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue,
            "herald-bench-relay",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::from(prefetch))
        .build()?;
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
        };
        let client = client.clone();
        let urls = urls.clone();
        tokio::spawn(async move {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let body = axum::body::Bytes::from(delivery.data.clone());
            let posts = urls.iter().map(|url| {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &id)
                    .body(body.clone())
                    .send()
            });
            let all_ok = futures_util::future::join_all(posts)
                .await
                .into_iter()
                .all(|r| r.is_ok_and(|r| r.status().is_success()));
            let settled = if all_ok {
                delivery.acker.ack(BasicAckOptions::default()).await
            } else {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            };
            if let Err(error) = settled {
                eprintln!("relay: settling a message failed: {error}");
            }
        });
    }
    let _ = channel.close(200, "bench done").await;
    Ok(())
}
