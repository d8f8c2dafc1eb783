//! The practical limit the hub is measured against: a minimal tokio-tungstenite broadcast
//! server with the same per-socket buffer sizes as the hub, a reader and a writer task per
//! socket, and nothing else (no auth, no Redis, no replay, no queues).
//!
//! Every text frame a client sends is broadcast to all connected clients.
//!
//! ```sh
//! cargo run --release -p instaclone-loadtest --example broadcast_server -- 127.0.0.1:3105
//! ```

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::broadcast,
};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, protocol::WebSocketConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3105".to_owned());
    let listener = TcpListener::bind(&address).await?;
    eprintln!("broadcast server on {address}, pid {}", std::process::id());
    let (frames, _) = broadcast::channel::<Utf8Bytes>(1024);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, frames.clone()));
            }
            Err(error) => {
                // Out of file descriptors, typically: wait instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, frames: broadcast::Sender<Utf8Bytes>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(16 * 1024));
    let Ok(socket) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let mut receiver = frames.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            match receiver.recv().await {
                Ok(frame) => {
                    if sink.send(Message::Text(frame)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    while let Some(Ok(message)) = source.next().await {
        if let Message::Text(text) = message {
            let _ = frames.send(text);
        }
    }
    writer.abort();
}
