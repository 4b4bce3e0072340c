//! SIGPIPE in the relay. A binary of its own: it installs a SIGPIPE handler, which is
//! process-wide, and must not count a signal raised by another test running beside it.

use std::time::Duration;

use ferrosocks_server::RelayMode;
use ferrosocks_testkit::with_deadline;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The last bytes go out with flags of their own (`MSG_MORE`); they must include
/// `MSG_NOSIGNAL`, as the standard library's sends do, or a client that half-closed and
/// then reset would raise SIGPIPE in the server's process (fatal where a program
/// embedding the server leaves the signal at its default). Here the signal is counted.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn last_bytes_to_a_client_gone_raise_no_sigpipe() {
    use ferrosocks_server::relay::RelayEnd;
    use tokio::signal::unix::{signal, SignalKind};

    let mut sigpipe = signal(SignalKind::pipe()).unwrap();
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        let (relay_client_side, mut client) = ferrosocks_testkit::tcp_pair().await;
        let (relay_target_side, mut target) = ferrosocks_testkit::tcp_pair().await;
        let tunnel =
            ferrosocks_testkit::relay_until_closed(&relay_client_side, &relay_target_side, mode);
        let peers = async {
            // The client half-closes; once the target has seen that end, the client
            // resets, and only then does the target answer and close.
            client.shutdown().await.unwrap();
            assert_eq!(target.read(&mut [0u8; 1]).await.unwrap(), 0);
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client);
            tokio::time::sleep(Duration::from_millis(50)).await;
            target.write_all(b"too late").await.unwrap();
            target.shutdown().await.unwrap();
        };
        let (stats, ()) = with_deadline(async { tokio::join!(tunnel, peers) }).await;
        assert_eq!(stats.end, RelayEnd::Error, "{mode:?}");
        assert_eq!(stats.down, 0, "{mode:?}");
    }
    let raised = tokio::time::timeout(Duration::from_millis(200), sigpipe.recv()).await;
    assert!(raised.is_err(), "SIGPIPE raised");
}
