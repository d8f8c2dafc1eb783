//! Server-sent events as a browser's `EventSource` reads them, parsed by `eventsource-stream`:
//! comments are skipped, the `data:` lines of one event are joined with `\n`, an event without
//! `event:` is a `message`, and `id` is the last event id seen (what a reconnect resumes from).

use std::{pin::Pin, time::Duration};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt, stream};

pub use eventsource_stream::Event as SseEvent;

type Events =
    Pin<Box<dyn Stream<Item = Result<SseEvent, EventStreamError<reqwest::Error>>> + Send>>;

/// The events of one streaming response (see [`TestRequest::sse`](super::TestRequest::sse)).
pub struct SseStream {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    events: Events,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> Self {
        let (status, headers) = (response.status(), response.headers().clone());
        let chunks = stream::unfold(response, |mut response| async move {
            let chunk = response.chunk().await.transpose()?;
            Some((chunk, response))
        });
        Self {
            status,
            headers,
            events: Box::pin(chunks.eventsource()),
        }
    }

    /// The next event; `None` when the stream ends or breaks, or nothing comes within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.events.next())
            .await
            .ok()??
            .ok()
    }

    /// The next event of type `name`, skipping any other; `None` as for
    /// [`next_event`](Self::next_event) if none has come within `within`.
    pub async fn next_named(&mut self, name: &str, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if event.event == name {
                return Some(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_parsed_as_the_spec_says() {
        let chunks: [Result<&[u8], std::convert::Infallible>; 3] = [
            Ok(b":heartbeat\n\nid: 5-1\nevent: notification\ndata: {\"a\":\n"),
            Ok(b"data: 1}\n\ndata: plain\n"),
            Ok(b"\n"),
        ];
        let mut events = stream::iter(chunks).eventsource();
        let first = events.next().await.and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            (first.id.as_str(), first.event.as_str()),
            ("5-1", "notification")
        );
        assert_eq!(
            first.data, "{\"a\":\n1}",
            "data lines join with a line feed"
        );
        let second = events.next().await.and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            (
                second.id.as_str(),
                second.event.as_str(),
                second.data.as_str()
            ),
            ("5-1", "message", "plain")
        );
    }
}
