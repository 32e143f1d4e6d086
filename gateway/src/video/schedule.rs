//! Fair access to the shared detector: cameras take turns in the order they asked (a FIFO
//! ticket lock), so with many cameras on one detector none waits for more than one
//! inference of each other camera. A plain mutex lets a thread that just released the lock
//! take it again before the waiters wake: some cameras then waited seconds (p99 1.2 s with
//! 16 cameras at 25 ms an inference) while others were served at once.
//!
//! Batching frames of several cameras into one inference would cut the per-call overhead,
//! but the YOLOX-Nano model's input has a fixed batch of 1 (`images` float32
//! [1, 3, 416, 416]), so cameras are served one frame at a time.

use std::sync::{Condvar, Mutex};

/// A FIFO ticket lock.
#[derive(Debug, Default)]
pub struct Turnstile {
    /// (next ticket to hand out, ticket being served): one std mutex, held only to take or
    /// return a ticket, never during an inference.
    tickets: Mutex<(u64, u64)>,
    turn: Condvar,
}

/// A turn at the detector; the next waiter's turn comes when it is dropped.
pub struct Turn<'a> {
    turnstile: &'a Turnstile,
}

impl Turnstile {
    /// Waits for this caller's turn (callers are served in the order they called).
    pub fn enter(&self) -> Turn<'_> {
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            t = self.turn.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        Turn { turnstile: self }
    }

    /// Callers waiting or served now.
    pub fn queued(&self) -> u64 {
        let t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        t.0 - t.1
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut t = self
            .turnstile
            .tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.1 += 1;
        self.turnstile.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn callers_are_served_in_the_order_they_asked_even_when_one_comes_back_at_once() {
        let gate = Arc::new(Turnstile::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = gate.enter();
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (waiter, order) = (gate.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                let _turn = waiter.enter();
                order.lock().unwrap().push(i);
            }));
            // Wait until this one holds its ticket before the next asks.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while gate.queued() < i + 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "waiter {i} never queued"
                );
                std::thread::yield_now();
            }
        }
        drop(first);
        // The thread that just left asks again at once: it goes to the back of the queue.
        let again = gate.enter();
        order.lock().unwrap().push(99);
        drop(again);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 99]);
        assert_eq!(gate.queued(), 0);
    }
}
