//! A client that stops reading is cut off with close code 4008, without slowing anyone else.

use std::time::Duration;

use instaclone_shared::testing::TestEnv;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
use uuid::Uuid;

use crate::helpers::{
    Publisher, bearer, metric, next_notification, notification_with, spawn_replica, ws_connect,
};

#[tokio::test]
async fn a_slow_client_is_cut_off_without_delaying_another() {
    let mut env = TestEnv::new();
    env.settings.hub.send_queue_capacity = 4;
    let replica = spawn_replica(&env).await;
    let publisher = Publisher::new(&env).await;
    let (slow_user, fast_user) = (Uuid::now_v7(), Uuid::now_v7());

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", replica.port).parse().unwrap())
        .await
        .unwrap();
    let mut request = replica.ws("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", bearer(&env.access_token(slow_user)));
    let (mut slow, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    let mut fast = ws_connect(&replica, &env.access_token(fast_user), "").await;

    // Publish until the hub gives up on the slow client (kernel socket buffers absorb the
    // first few megabytes), while the fast client keeps reading.
    let padding = "x".repeat(32 * 1024);
    let mut rounds = 0;
    while metric(&replica, "hub_drops_total", &["reason=\"queue_full\""]).await < 1.0 {
        assert!(rounds < 600, "the slow client's queue never overflowed");
        for _ in 0..10 {
            let data = json!({ "round": rounds, "padding": padding });
            publisher
                .publish(&[
                    notification_with(slow_user, data.clone()),
                    notification_with(fast_user, data),
                ])
                .await;
            let frame = next_notification(&mut fast).await;
            assert_eq!(frame["data"]["data"]["round"], rounds);
            rounds += 1;
        }
    }

    // The slow client finds, after what was buffered, that it was closed (or reset).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the slow client was never disconnected");
    if let Some(code) = ended {
        assert_eq!(code, 4008);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&replica, "hub_disconnects_total", &["reason=\"too_slow\""]).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no too_slow disconnect recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
