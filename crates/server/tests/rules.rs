use ferrosocks_proto::{Command, Rep};
use ferrosocks_server::{Action, Rule, Rules};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, RawClient};

use crate::request;

fn rule(action: Action) -> Rule {
    Rule {
        action,
        commands: vec![],
        from: vec![],
        to: vec![],
        ports: None,
        users: vec![],
    }
}

async fn connect_rep(addr: std::net::SocketAddr, dst: &str) -> Rep {
    let mut c = RawClient::connect(addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, dst)).await;
    let reply = c.recv_reply().await;
    if reply.rep != Rep::SUCCEEDED {
        c.expect_eof().await;
    }
    reply.rep
}

#[tokio::test]
async fn denied_connect_gets_rep_02_and_order_of_rules_matters() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut deny_echo = rule(Action::Deny);
    deny_echo.ports = Some(echo.port()..=echo.port());
    let mut config = test_config();
    config.rules = Rules::new(vec![deny_echo.clone(), rule(Action::Allow)]);
    let server = spawn_server(config).await;
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::CONNECTION_NOT_ALLOWED
    );
    // The name resolves to the denied address: denied as well.
    assert_eq!(
        connect_rep(server.addr, &format!("localhost:{}", echo.port())).await,
        Rep::CONNECTION_NOT_ALLOWED
    );

    let mut config = test_config();
    config.rules = Rules::new(vec![rule(Action::Allow), deny_echo]);
    let server = spawn_server(config).await;
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::SUCCEEDED
    );
}

#[tokio::test]
async fn domain_rule_and_default_deny() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut allow_localhost = rule(Action::Allow);
    allow_localhost.to = vec!["localhost".parse().unwrap()];
    let mut config = test_config();
    config.rules = Rules::new(vec![allow_localhost]);
    let server = spawn_server(config).await;
    assert_eq!(
        connect_rep(server.addr, &format!("localhost:{}", echo.port())).await,
        Rep::SUCCEEDED
    );
    // Not matched by any rule: the implicit final deny.
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::CONNECTION_NOT_ALLOWED
    );
}

#[tokio::test]
async fn command_rules_apply_to_bind_and_udp() {
    let mut deny = rule(Action::Deny);
    deny.commands = vec![Command::BIND, Command::UDP_ASSOCIATE];
    let mut config = test_config();
    config.rules = Rules::new(vec![deny, rule(Action::Allow)]);
    let server = spawn_server(config).await;
    for (command, dst) in [
        (Command::BIND, "127.0.0.1:0"),
        (Command::UDP_ASSOCIATE, "0.0.0.0:0"),
    ] {
        let mut c = RawClient::connect(server.addr).await;
        c.greet_no_auth().await;
        c.send(&request(command, dst)).await;
        assert_eq!(c.recv_reply().await.rep, Rep::CONNECTION_NOT_ALLOWED);
        c.expect_eof().await;
    }
}

#[tokio::test]
async fn reload_swaps_rules_without_restart() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::SUCCEEDED
    );
    server.handle.reload(
        vec![ferrosocks_server::AuthMethod::None],
        Default::default(),
        Rules::new(vec![rule(Action::Deny)]),
    );
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::CONNECTION_NOT_ALLOWED
    );
}

/// A CONNECT back to the server's own listener would open another session per tunnel: one
/// client could chain pipelined requests through the server until every connection slot
/// was held (and, with the last hop waiting in the backlog, held them until the idle
/// timeout). It gets 02, by address, as 0.0.0.0 and by name; other ports still connect.
#[tokio::test]
async fn connect_to_the_servers_own_listener_gets_rep_02() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let port = server.addr.port();
    let mut targets = vec![server.addr.to_string(), format!("0.0.0.0:{port}")];
    // By name where `localhost` is 127.0.0.1 only (a `::1` among its addresses, where
    // nothing listens, would answer 05 instead).
    if std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .is_ok_and(|mut a| a.all(|a| a == server.addr))
    {
        targets.push(format!("localhost:{port}"));
    }
    for dst in targets {
        assert_eq!(
            connect_rep(server.addr, &dst).await,
            Rep::CONNECTION_NOT_ALLOWED,
            "{dst}"
        );
    }
    assert_eq!(
        connect_rep(server.addr, &echo.to_string()).await,
        Rep::SUCCEEDED
    );

    // The chain: many CONNECTs to itself in one write; the first is refused, and the
    // server holds no session for it once the client is gone.
    let mut chain = Vec::new();
    chain.extend_from_slice(&[5, 1, 0]);
    for _ in 0..50 {
        chain.extend_from_slice(&request(Command::CONNECT, &server.addr.to_string()));
    }
    let mut c = RawClient::connect(server.addr).await;
    c.send(&chain).await;
    assert_eq!(c.recv_exact(2).await, [5, 0]);
    assert_eq!(c.recv_reply().await.rep, Rep::CONNECTION_NOT_ALLOWED);
    c.expect_eof().await;
    let line = server.wait_for_log("own listening address").await;
    assert!(line.contains("\"rep\":2"), "{line}");
}
