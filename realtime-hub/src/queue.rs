//! A connection's bounded send queue: the dispatcher and the reader put messages in, the writer
//! takes them out in order.
//!
//! Why not `tokio::sync::mpsc`: every tokio channel allocates its first block of 32 slots and a
//! cache-padded channel struct up front, about 1 KiB, for each of a replica's connections, most
//! of which sit idle with an empty queue. This one is a `VecDeque` behind a mutex (it grows only
//! when messages wait, and the critical sections are a push or a pop) and a `Notify` that wakes
//! the writer: about 150 bytes idle. The semantics are the few the hub uses: `try_send` that
//! reports a full or closed queue, `send_control` with a little headroom beyond the capacity for
//! the reader's rare replies that must not be dropped, and a cancel-safe `recv` that ends once
//! every sender is gone.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// Room beyond the capacity that [`Sender::send_control`] may use.
pub const CONTROL_HEADROOM: usize = 16;

struct Shared<T> {
    messages: Mutex<State<T>>,
    /// Wakes the receiver; a notification sent while it is not waiting is kept for its next wait.
    arrived: Notify,
    senders: AtomicUsize,
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue of at most `capacity` waiting messages.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        messages: Mutex::new(State {
            queue: VecDeque::new(),
            receiver_gone: false,
        }),
        arrived: Notify::new(),
        senders: AtomicUsize::new(1),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    /// `capacity` messages are already waiting: the receiver is not keeping up.
    Full,
    /// The receiver is gone.
    Closed,
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: the receiver sees the end once the queue is drained.
            self.shared.arrived.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `message` unless the queue is full or the receiver gone.
    pub fn try_send(&self, message: T) -> Result<(), TrySendError> {
        self.push(message, self.shared.capacity)
    }

    /// Queues `message` even when the queue is full, within [`CONTROL_HEADROOM`] more (for
    /// rare messages that must not be lost to a burst of others).
    pub fn send_control(&self, message: T) -> Result<(), TrySendError> {
        self.push(
            message,
            self.shared.capacity.saturating_add(CONTROL_HEADROOM),
        )
    }

    fn push(&self, message: T, limit: usize) -> Result<(), TrySendError> {
        {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.queue.len() >= limit {
                return Err(TrySendError::Full);
            }
            state.queue.push_back(message);
        }
        self.shared.arrived.notify_one();
        Ok(())
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.queue.clear();
    }
}

impl<T> Receiver<T> {
    /// The next message, or `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: a message is only taken by a call that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(message) = self.shared.lock().queue.pop_front() {
                return Some(message);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A sender may have pushed just before it went.
                return self.shared.lock().queue.pop_front();
            }
            self.shared.arrived.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_up_to_the_capacity() {
        let (sender, mut receiver) = channel(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(TrySendError::Full));
        assert_eq!(sender.send_control(4), Ok(()));
        for extra in 1..CONTROL_HEADROOM {
            assert_eq!(sender.send_control(100 + extra), Ok(()));
        }
        assert_eq!(sender.send_control(0), Err(TrySendError::Full));
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(receiver.recv().await, Some(2));
        assert_eq!(receiver.recv().await, Some(4));
        assert_eq!(receiver.recv().await, Some(101));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_ends_when_the_senders_do() {
        let (sender, mut receiver) = channel(8);
        let second = sender.clone();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(message) = receiver.recv().await {
                got.push(message);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.try_send("a").expect("queued");
        drop(sender);
        tokio::time::sleep(Duration::from_millis(20)).await;
        second.try_send("b").expect("queued");
        drop(second);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the receiver ends")
            .expect("joined");
        assert_eq!(got, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_cancelled_receive_takes_nothing() {
        let (sender, mut receiver) = channel(8);
        let cancelled = tokio::time::timeout(Duration::from_millis(10), receiver.recv()).await;
        assert!(cancelled.is_err());
        sender.try_send(7).expect("queued");
        assert_eq!(receiver.recv().await, Some(7));
    }

    #[test]
    fn sending_to_a_dropped_receiver_fails() {
        let (sender, receiver) = channel(8);
        drop(receiver);
        assert_eq!(sender.try_send(1), Err(TrySendError::Closed));
        assert_eq!(sender.send_control(1), Err(TrySendError::Closed));
    }
}
