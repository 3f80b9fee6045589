//! Configuration as operators set it: through `HERALD__…` variables of the real binary.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{eventually, TestEnv};

/// A port free on loopback right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_all_digit_admin_token_is_accepted_as_given() {
    let env = TestEnv::new().await;
    let port = free_port();
    let token = "000123456789";
    let mut herald = env
        .herald_command()
        .args(["serve", "--role", "api"])
        .env("HERALD__API__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD__API__ADMIN_TOKEN", token)
        .stdout(Stdio::null())
        .spawn()
        .expect("herald starts");
    let url = format!("http://127.0.0.1:{port}/api/v1/endpoints");
    let client = reqwest::Client::new();
    let get = |token: &'static str| client.get(&url).bearer_auth(token).send();
    eventually("the API to answer", Duration::from_secs(30), || async {
        get(token).await.is_ok()
    })
    .await;
    assert_eq!(
        get(token).await.unwrap().status(),
        200,
        "the token as given"
    );
    // What `try_parsing` made of it: a number without its leading zeros.
    assert_eq!(get("123456789").await.unwrap().status(), 401);
    herald.kill().unwrap();
    herald.wait().unwrap();
    env.cleanup().await;
}
