//! Connections to the real RabbitMQ: what Herald negotiates.

use herald::broker::{connect, DEFAULT_FRAME_MAX};

use crate::common::amqp_url;

#[tokio::test]
async fn connections_ask_for_small_frames_unless_the_url_sets_frame_max() {
    let url = amqp_url();
    let connection = connect(&url, "herald-test-frames")
        .await
        .expect("broker up");
    // RabbitMQ offers 128 KiB; Herald takes its smaller default.
    assert_eq!(connection.configuration().frame_max(), DEFAULT_FRAME_MAX);
    connection.close(200, "done").await.unwrap();

    let separator = if url.contains('?') { '&' } else { '?' };
    let connection = connect(
        &format!("{url}{separator}frame_max=65536"),
        "herald-test-frames",
    )
    .await
    .expect("broker up");
    assert_eq!(connection.configuration().frame_max(), 65536);
    connection.close(200, "done").await.unwrap();

    assert!(
        connect("http://not-amqp", "herald-test-frames")
            .await
            .is_err(),
        "a URL that is not AMQP is an error, not a panic"
    );
}
