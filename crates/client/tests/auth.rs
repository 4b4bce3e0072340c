use ferrosocks_client::{Credentials, Error, ProxyUrl, Resolution, Socks5Stream};
use ferrosocks_proto::{Addr, Method, ProtocolError, Rep};

use crate::support::{deadline, spawn_fake, spawn_raw, url, Policy};

async fn fake_accepting_alice() -> (std::net::SocketAddr, tokio::task::JoinHandle<Option<()>>) {
    spawn_fake(
        "127.0.0.1:0",
        Policy::user_pass("alice", "s3cr@t"),
        |mut s| async move {
            s.reply(Rep::SUCCEEDED, Addr::UNSPECIFIED).await;
        },
    )
    .await
}

#[tokio::test]
async fn credentials_from_the_url_are_accepted() {
    deadline(async {
        let (addr, server) = fake_accepting_alice().await;
        let proxy: ProxyUrl = format!("socks5h://alice:s3cr%40t@{addr}").parse().unwrap();
        Socks5Stream::connect(&proxy, "t.test:1").await.unwrap();
        assert!(server.await.unwrap().is_some());
    })
    .await
}

#[tokio::test]
async fn explicit_credentials_are_accepted() {
    deadline(async {
        let (addr, server) = fake_accepting_alice().await;
        let creds = Credentials::new("alice", "s3cr@t").unwrap();
        let proxy = url(addr, Resolution::Proxy).with_credentials(Some(creds));
        Socks5Stream::connect(&proxy, "t.test:1").await.unwrap();
        assert!(server.await.unwrap().is_some());
    })
    .await
}

#[tokio::test]
async fn wrong_password_is_auth_failed_with_the_status() {
    deadline(async {
        let (addr, server) = fake_accepting_alice().await;
        let proxy: ProxyUrl = format!("socks5h://alice:wrong@{addr}").parse().unwrap();
        let err = Socks5Stream::connect(&proxy, "t.test:1").await.unwrap_err();
        assert!(matches!(err, Error::AuthFailed(0x01)), "{err:?}");
        assert!(server.await.unwrap().is_none());
    })
    .await
}

#[tokio::test]
async fn credentials_offered_but_no_auth_chosen_still_works() {
    deadline(async {
        let (addr, server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, Addr::UNSPECIFIED).await;
        })
        .await;
        let proxy: ProxyUrl = format!("socks5h://alice:pw@{addr}").parse().unwrap();
        Socks5Stream::connect(&proxy, "t.test:1").await.unwrap();
        assert!(server.await.unwrap().is_some());
    })
    .await
}

#[tokio::test]
async fn server_requiring_credentials_is_no_acceptable_method() {
    deadline(async {
        let (addr, server) = fake_accepting_alice().await;
        let err = Socks5Stream::connect(&url(addr, Resolution::Proxy), "t.test:1")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoAcceptableMethod), "{err:?}");
        assert!(server.await.unwrap().is_none());
    })
    .await
}

#[tokio::test]
async fn a_method_that_was_not_offered_is_a_protocol_error() {
    deadline(async {
        let addr = spawn_raw(vec![0x05, Method::GSSAPI.0]).await;
        let err = Socks5Stream::connect(&url(addr, Resolution::Proxy), "t.test:1")
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::UnexpectedMethod(0x01))),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn auth_error_messages_never_contain_the_password() {
    deadline(async {
        let (addr, _server) = fake_accepting_alice().await;
        let proxy: ProxyUrl = format!("socks5h://alice:hunter2@{addr}").parse().unwrap();
        let err = Socks5Stream::connect(&proxy, "t.test:1").await.unwrap_err();
        assert!(!format!("{err} {err:?} {proxy} {proxy:?}").contains("hunter2"));
    })
    .await
}
