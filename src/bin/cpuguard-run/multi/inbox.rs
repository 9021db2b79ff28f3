//! How the worker reader threads reach the parent's GLib main loop: a
//! channel for the events, and a pipe whose read end the main context
//! watches, written once per event, so the loop wakes when there is one.
//! Each byte is written after its event is queued: when the pipe is
//! readable, the events it stands for can be taken.

use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

use crate::channel::WorkerEvent;

/// What a worker's reader threads tell the parent loop.
#[derive(Debug)]
pub enum Event {
    /// One stderr line of a worker (for people: forwarded as it is).
    Stderr(u32, String),
    /// An event on a worker's channel (see [`crate::channel`]).
    Said(u32, WorkerEvent),
    /// A worker's stdout other than its events, once it closed it: its result.
    Stdout(u32, String),
    /// A worker process ended (reaped), with the CPU seconds it used.
    Exited(u32, ExitStatus, Option<f64>),
}

/// The sending side, one clone per reader thread.
#[derive(Clone)]
pub struct Outbox {
    events: Sender<Event>,
    wake: Arc<PipeWriter>,
}

impl Outbox {
    /// False once the parent is gone.
    pub fn send(&self, event: Event) -> bool {
        if self.events.send(event).is_err() {
            return false;
        }
        // A full pipe (64 KiB of wake-ups not yet read) wakes the loop anyway.
        let _ = (&*self.wake).write(&[0]);
        true
    }
}

/// The receiving side, on the main loop's thread.
pub struct Inbox {
    events: Receiver<Event>,
    wake: PipeReader,
}

pub fn channel() -> std::io::Result<(Outbox, Inbox)> {
    let (reader, writer) = std::io::pipe()?;
    // Taking events also empties the pipe, and must never block doing so.
    rustix::io::ioctl_fionbio(&reader, true)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Outbox {
            events: tx,
            wake: Arc::new(writer),
        },
        Inbox {
            events: rx,
            wake: reader,
        },
    ))
}

impl Inbox {
    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Every event sent so far, in order.
    pub fn take(&mut self) -> Vec<Event> {
        let mut buf = [0u8; 512];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.events.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_in_order_and_the_pipe_is_emptied_without_blocking() {
        let (outbox, mut inbox) = channel().unwrap();
        assert!(inbox.take().is_empty(), "nothing sent: no wait");
        let sender = outbox.clone();
        std::thread::spawn(move || {
            for i in 0..1000 {
                assert!(sender.send(Event::Stderr(1, i.to_string())));
            }
        })
        .join()
        .unwrap();
        let lines: Vec<String> = inbox
            .take()
            .into_iter()
            .map(|e| match e {
                Event::Stderr(_, line) => line,
                other => panic!("{other:?}"),
            })
            .collect();
        let expected: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(lines, expected);
        assert!(inbox.take().is_empty());
        let mut byte = [0u8; 1];
        assert!(
            (&inbox.wake).read(&mut byte).is_err(),
            "wake-ups left in the pipe"
        );
        drop(inbox);
        assert!(!outbox.send(Event::Stderr(1, String::new())));
    }
}
