//! A session's queue of deliveries: in memory, or (for the stored messages
//! of a persistent session) only their place on disk.

use std::collections::VecDeque;

use super::DropReason;
use crate::durable::DiskRef;
use crate::message::Delivery;

/// One entry of a session's queue: a delivery in memory, or only the place
/// where a stored message is (an offline persistent session's backlog,
/// read back when it reconnects).
#[derive(Debug, Clone)]
pub enum Queued {
    /// In memory, ready to send (boxed: an offline backlog is mostly
    /// `Stored` entries, which stay 24 bytes this way).
    Ready(Box<Delivery>),
    /// On disk; must be loaded before it is sent.
    Stored(DiskRef),
    /// On disk since before a restart: it may have been sent then, so it
    /// goes out with DUP set.
    Recovered(DiskRef),
}

// An offline session's backlog costs one of these per message.
const _: () = assert!(std::mem::size_of::<Queued>() <= 24);

/// Deliveries waiting to be sent to a client, bounded by count and bytes:
/// in memory, or (for a persistent session's stored messages) only their
/// place on disk.
#[derive(Debug)]
pub struct MemoryQueue {
    pub(super) items: VecDeque<Queued>,
    pub(super) bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

impl MemoryQueue {
    /// A queue holding at most `max_messages` entries and `max_bytes` of
    /// payload in memory.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }
}

pub(super) fn entry_bytes(entry: &Queued) -> usize {
    match entry {
        Queued::Ready(delivery) => delivery.message.size(),
        Queued::Stored(_) | Queued::Recovered(_) => 0,
    }
}

fn stored_ref(entry: &Queued) -> Option<DiskRef> {
    match entry {
        Queued::Ready(delivery) => delivery.stored,
        Queued::Stored(at) | Queued::Recovered(at) => Some(*at),
    }
}

impl MemoryQueue {
    /// Adds an entry at the back, or refuses it when full.
    pub fn push(&mut self, entry: Queued) -> Result<(), DropReason> {
        let size = entry_bytes(&entry);
        if self.items.len() >= self.max_messages || self.bytes + size > self.max_bytes {
            return Err(DropReason::QueueFull);
        }
        self.bytes += size;
        self.items.push_back(entry);
        Ok(())
    }

    /// Takes the entry at the front.
    pub fn pop(&mut self) -> Option<Queued> {
        let entry = self.items.pop_front()?;
        self.bytes -= entry_bytes(&entry);
        Some(entry)
    }

    /// The entry at the front.
    pub fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Gives back the queue's room if nothing is queued.
    pub fn shrink_if_empty(&mut self) {
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Raises or lowers the entry limit.
    pub fn set_max_messages(&mut self, max: usize) {
        self.max_messages = max;
    }

    /// Up to `max` stored entries at the front, in order.
    pub fn leading_stored(&self, max: usize) -> Vec<DiskRef> {
        self.items
            .iter()
            .map_while(|entry| match entry {
                Queued::Stored(at) | Queued::Recovered(at) => Some(*at),
                Queued::Ready(_) => None,
            })
            .take(max)
            .collect()
    }

    /// Replaces stored entries by the deliveries loaded for them; an entry
    /// whose message could not be loaded (`None`) is removed.
    pub fn fill(&mut self, loaded: Vec<(DiskRef, Option<Delivery>)>) {
        let mut loaded: std::collections::HashMap<DiskRef, Option<Delivery>> =
            loaded.into_iter().collect();
        let items = std::mem::take(&mut self.items);
        for entry in items {
            match entry {
                Queued::Stored(at) | Queued::Recovered(at) => {
                    let recovered = matches!(entry, Queued::Recovered(_));
                    match loaded.remove(&at) {
                        Some(Some(mut delivery)) => {
                            delivery.dup = recovered;
                            self.bytes += delivery.message.size();
                            self.items.push_back(Queued::Ready(Box::new(delivery)));
                        }
                        Some(None) => {}
                        None => self.items.push_back(entry),
                    }
                }
                ready => self.items.push_back(ready),
            }
        }
    }

    /// Keeps only the disk reference of stored deliveries (the session went
    /// offline: its backlog stays on disk, not in memory).
    pub fn park(&mut self) {
        for entry in &mut self.items {
            if let Queued::Ready(delivery) = entry
                && let Some(at) = delivery.stored
            {
                let parked = if delivery.dup {
                    Queued::Recovered(at)
                } else {
                    Queued::Stored(at)
                };
                self.bytes -= delivery.message.size();
                *entry = parked;
            }
        }
    }

    /// Calls `each` with every disk reference queued.
    pub fn for_each_stored(&self, each: &mut dyn FnMut(DiskRef)) {
        for at in self.items.iter().filter_map(stored_ref) {
            each(at);
        }
    }

    /// Points the unsent stored entry at `from` to `to` instead; whether
    /// there was one.
    pub fn replace_stored(&mut self, from: DiskRef, to: DiskRef) -> bool {
        match self
            .items
            .iter_mut()
            .find(|e| matches!(e, Queued::Stored(at) if *at == from))
        {
            Some(entry) => {
                *entry = Queued::Stored(to);
                true
            }
            None => false,
        }
    }

    /// The stored entries `select` picks if each is unsent and on disk
    /// only (none loaded, none sent before a restart); `None` otherwise.
    pub fn unsent_stored(&self, select: &dyn Fn(&DiskRef) -> bool) -> Option<Vec<DiskRef>> {
        let mut out = Vec::new();
        for entry in &self.items {
            match entry {
                Queued::Stored(at) if select(at) => out.push(*at),
                other if stored_ref(other).is_some_and(|at| select(&at)) => return None,
                _ => {}
            }
        }
        Some(out)
    }

    /// Drops the stored entries `too_old` says are; returns how many.
    pub fn drop_stored(&mut self, too_old: &dyn Fn(DiskRef) -> bool) -> usize {
        let before = self.items.len();
        let mut freed = 0;
        self.items.retain(|entry| {
            let drop = stored_ref(entry).is_some_and(too_old);
            if drop {
                freed += entry_bytes(entry);
            }
            !drop
        });
        self.bytes -= freed;
        before - self.items.len()
    }
}
