//! The work the LevelDB writer thread takes, and what each piece weighs.

use alldata_coordinator::{PutStatus, StorageError};
use alldata_keygen::EventKey;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::interval::IntervalClosed;

/// A reply channel for one put.
pub(crate) type PutReply = oneshot::Sender<Result<PutStatus, StorageError>>;
/// A batch put's reply channel, its results, and which of them hold only if
/// the write batch commits.
pub(crate) type ManyReply = (
    oneshot::Sender<Vec<Result<PutStatus, StorageError>>>,
    Vec<Result<PutStatus, StorageError>>,
    Vec<usize>,
);
/// A reply channel for one interval check.
pub(crate) type CheckReply = oneshot::Sender<Result<Vec<IntervalClosed>, StorageError>>;

/// Work for the writer.
pub(crate) enum Command {
    /// A write-once put.
    Put {
        key: EventKey,
        event: Bytes,
        reply: PutReply,
    },
    /// Several write-once puts answered together, one result per event.
    PutMany {
        events: Vec<(EventKey, Bytes)>,
        reply: oneshot::Sender<Vec<Result<PutStatus, StorageError>>>,
    },
    /// Close the intervals that left the acceptance window.
    Check { reply: Option<CheckReply> },
    /// Compact the database (blocking, so done here rather than on the runtime).
    Compact {
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Moves an event aside if its bytes hash to `value_hash`.
    Quarantine {
        key: EventKey,
        value_hash: u64,
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Write what came before, record a clean shutdown and stop: later puts
    /// fail as "closed".
    Shutdown { reply: oneshot::Sender<()> },
}

/// Answers a command that arrived after the shutdown: the store is closed.
pub(crate) fn answer_closed(command: Command) {
    let closed = || StorageError::Failed("the LevelDB storage is closed".into());
    match command {
        Command::Put { reply, .. } => {
            let _ = reply.send(Err(closed()));
        }
        Command::PutMany { events, reply } => {
            let _ = reply.send(events.iter().map(|_| Err(closed())).collect());
        }
        Command::Check { reply } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(closed()));
            }
        }
        Command::Compact { reply } => {
            let _ = reply.send(Err(closed()));
        }
        Command::Quarantine { reply, .. } => {
            let _ = reply.send(Err(closed()));
        }
        Command::Shutdown { reply } => {
            let _ = reply.send(());
        }
    }
}

/// Events and bytes a command carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
}

impl Load {
    pub(crate) fn add(self, other: Load) -> Load {
        Load {
            events: self.events + other.events,
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

impl Command {
    /// What this command adds to a write batch.
    pub(crate) fn load(&self) -> Load {
        match self {
            Command::Put { event, .. } => Load {
                events: 1,
                bytes: event.len(),
            },
            Command::PutMany { events, .. } => Load {
                events: events.len(),
                bytes: events.iter().map(|(_, e)| e.len()).sum(),
            },
            Command::Check { .. }
            | Command::Compact { .. }
            | Command::Quarantine { .. }
            | Command::Shutdown { .. } => Load::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_command_s_load_counts_events_and_bytes() {
        let key = alldata_keygen::KeyGenerator::new().generate();
        let (reply, _) = oneshot::channel();
        let many = Command::PutMany {
            events: vec![
                (key, Bytes::from_static(b"abc")),
                (key, Bytes::from_static(b"de")),
            ],
            reply,
        };
        assert_eq!(
            many.load(),
            Load {
                events: 2,
                bytes: 5
            }
        );
        let (reply, _) = oneshot::channel();
        let one = Command::Put {
            key,
            event: Bytes::from_static(b"x"),
            reply,
        };
        assert_eq!(
            one.load().add(many.load()),
            Load {
                events: 3,
                bytes: 6
            }
        );
        assert_eq!(Command::Check { reply: None }.load(), Load::default());
    }
}
