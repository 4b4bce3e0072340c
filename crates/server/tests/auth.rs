use ferrosocks_proto::{Command, Rep};
use ferrosocks_server::{AuthMethod, Config, Users};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, RawClient};

use crate::request;

fn with_users(methods: Vec<AuthMethod>) -> Config {
    let mut config = test_config();
    for entry in ["alice:correct horse", "bob:b"] {
        let (name, cred) = Users::parse_entry(entry).unwrap();
        config.users.insert(name, cred);
    }
    config.auth_methods = methods;
    config
}

fn userpass(user: &str, pass: &str) -> Vec<u8> {
    let mut v = vec![1, user.len() as u8];
    v.extend(user.as_bytes());
    v.push(pass.len() as u8);
    v.extend(pass.as_bytes());
    v
}

#[tokio::test]
async fn server_preference_order_decides_the_method() {
    let server = spawn_server(with_users(vec![AuthMethod::UserPass, AuthMethod::None])).await;
    let mut c = RawClient::connect(server.addr).await;
    c.send(&[5, 2, 0, 2]).await;
    assert_eq!(c.recv_exact(2).await, [5, 2]);

    let server = spawn_server(with_users(vec![AuthMethod::None, AuthMethod::UserPass])).await;
    let mut c = RawClient::connect(server.addr).await;
    c.send(&[5, 2, 2, 0]).await;
    assert_eq!(c.recv_exact(2).await, [5, 0]);
}

#[tokio::test]
async fn no_acceptable_method_gets_05_ff_and_close() {
    let server = spawn_server(with_users(vec![AuthMethod::UserPass])).await;
    for greeting in [&[5u8, 1, 0][..], &[5, 2, 1, 0x80], &[5, 0]] {
        let mut c = RawClient::connect(server.addr).await;
        c.send(greeting).await;
        assert_eq!(c.recv_exact(2).await, [5, 0xff], "greeting {greeting:02x?}");
        c.expect_eof().await;
    }
}

#[tokio::test]
async fn userpass_success_then_connect() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(with_users(vec![AuthMethod::UserPass])).await;
    let mut c = RawClient::connect(server.addr).await;
    c.send(&[5, 1, 2]).await;
    assert_eq!(c.recv_exact(2).await, [5, 2]);
    c.send(&userpass("alice", "correct horse")).await;
    assert_eq!(c.recv_exact(2).await, [1, 0]);
    c.send(&request(Command::CONNECT, &echo.to_string())).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    c.send(b"ok").await;
    assert_eq!(c.recv_exact(2).await, b"ok");
    drop(c);
    server.wait_for_log("\"user\":\"alice\"").await;
}

#[tokio::test]
async fn userpass_failure_gets_nonzero_status_and_close_and_no_password_in_logs() {
    let server = spawn_server(with_users(vec![AuthMethod::UserPass])).await;
    for (user, pass) in [
        ("alice", "wrong horse"),
        ("mallory", "correct horse"),
        ("bob", "bb"),
        ("", ""),
    ] {
        let mut c = RawClient::connect(server.addr).await;
        c.send(&[5, 1, 2]).await;
        assert_eq!(c.recv_exact(2).await, [5, 2]);
        c.send(&userpass(user, pass)).await;
        let status = c.recv_exact(2).await;
        assert_eq!(status[0], 1);
        assert_ne!(status[1], 0, "{user}:{pass} must be rejected");
        c.expect_eof().await;
    }
    // Failed logins are logged by user name.
    server.wait_for_log("mallory").await;
    let log = server.log.lines().join("\n");
    for secret in ["wrong horse", "correct horse"] {
        assert!(
            !log.contains(secret),
            "password leaked into the access log: {log}"
        );
    }
}
