//! Which connections the daemon keeps: a table of open connections with their user and whether
//! they are running a request, and the rule that makes room for a new one.
//!
//! The daemon accepts every connection at once (a client waiting in the listen backlog behind
//! a flood would time out), then admits it here. Two caps apply: [`MAX_CONNECTIONS`] in all and
//! [`MAX_CONNECTIONS_PER_UID`] per user. When a new connection would pass one, the daemon closes
//! a connection that is not running a request (still in its handshake, idle between requests,
//! or sending a request frame) of that user, or, for the total cap, of the user holding the
//! most connections: one whose client has already hung up if there is one (a busy daemon may
//! not have noticed yet), else the **oldest**. So a flood of idle, silent or half-sent
//! connections (issue 14) only ever pushes out its own oldest members, and other users keep
//! their room. A new connection is refused only when every candidate is running a request.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::peek::has_hung_up;

/// Most connections open at once; each costs a task, a file descriptor and its buffers. Under
/// systemd's default soft limit of 1,024 descriptors this leaves room for model files.
pub const MAX_CONNECTIONS: usize = 512;

/// Most connections of one user (uid) at once, so that one user cannot take every slot. Well
/// above what one user's tools open (the e2e tests run 64 concurrent clients).
pub const MAX_CONNECTIONS_PER_UID: usize = 128;

/// The table of open connections.
#[derive(Debug, Default)]
pub struct Admission {
    /// Connections by admission order (lower id = older).
    table: Mutex<Table>,
}

/// The connections, oldest first.
#[derive(Debug, Default)]
struct Table {
    /// Id of the next connection admitted.
    next_id: u64,
    /// Open connections by id.
    slots: BTreeMap<u64, Slot>,
}

/// One open connection.
#[derive(Debug)]
struct Slot {
    /// Its user.
    uid: u32,
    /// Its socket, to see whether its client hung up. Valid while the slot exists: a
    /// connection gives up its slot before closing its socket.
    fd: RawFd,
    /// Whether it is running a request (never closed to make room).
    busy: bool,
    /// Tells its task it was closed to make room.
    signal: Arc<Signal>,
}

/// The eviction signal of one connection.
#[derive(Debug, Default)]
struct Signal {
    /// Set once the connection has been chosen to make room.
    evicted: AtomicBool,
    /// Wakes the connection's task.
    notify: Notify,
}

/// The outcome of [`Admission::admit`].
#[derive(Debug)]
pub enum Admit {
    /// The connection may proceed; the ticket keeps its slot until dropped.
    Admitted {
        /// Its slot.
        ticket: Ticket,
        /// The user of the connection closed to make room, if one was.
        evicted: Option<u32>,
    },
    /// No room: every connection that could give way is running a request.
    Refused(String),
}

impl Admission {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Admission::default())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every mutation is a single map operation, so a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection of user `uid` on socket `fd`, closing another one to make room if a
    /// cap is reached.
    pub fn admit(self: &Arc<Self>, uid: u32, fd: RawFd) -> Admit {
        let mut table = self.table();
        let of_uid = table.slots.values().filter(|s| s.uid == uid).count();
        let victim = if of_uid >= MAX_CONNECTIONS_PER_UID {
            match table.victim(|s| s.uid == uid) {
                Some(id) => Some(id),
                None => {
                    return Admit::Refused(format!(
                        "user {uid} already has {of_uid} connections to llmd, all running \
                         requests (at most {MAX_CONNECTIONS_PER_UID} per user); retry when one \
                         finishes"
                    ))
                }
            }
        } else if table.slots.len() >= MAX_CONNECTIONS {
            match table.hog_victim() {
                Some(id) => Some(id),
                None => {
                    return Admit::Refused(format!(
                        "llmd has {} connections open, all running requests (at most \
                         {MAX_CONNECTIONS}); retry when one finishes",
                        table.slots.len()
                    ))
                }
            }
        } else {
            None
        };
        let evicted = victim.and_then(|id| table.slots.remove(&id)).map(|slot| {
            slot.signal.evicted.store(true, Ordering::SeqCst);
            slot.signal.notify.notify_one();
            slot.uid
        });
        let id = table.next_id;
        table.next_id += 1;
        let signal = Arc::new(Signal::default());
        table.slots.insert(
            id,
            Slot {
                uid,
                fd,
                busy: false,
                signal: Arc::clone(&signal),
            },
        );
        Admit::Admitted {
            ticket: Ticket {
                admission: Arc::clone(self),
                id,
                signal,
            },
            evicted,
        }
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.table().slots.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// The connection to close among those `pick` selects that are not running a request: one
    /// whose client hung up, else the oldest.
    fn victim(&self, pick: impl Fn(&Slot) -> bool) -> Option<u64> {
        let mut idle = self.slots.iter().filter(|(_, s)| !s.busy && pick(s));
        let oldest = idle.clone().next().map(|(&id, _)| id);
        idle.find(|(_, s)| has_hung_up(s.fd))
            .map(|(&id, _)| id)
            .or(oldest)
    }

    /// The connection to close at the total cap: any whose client hung up, else the oldest of
    /// the user holding the most connections (among users that have one that can give way).
    fn hog_victim(&self) -> Option<u64> {
        if let Some((&id, _)) = self
            .slots
            .iter()
            .find(|(_, s)| !s.busy && has_hung_up(s.fd))
        {
            return Some(id);
        }
        let mut counts: BTreeMap<u32, (usize, Option<u64>)> = BTreeMap::new();
        for (&id, s) in &self.slots {
            let entry = counts.entry(s.uid).or_insert((0, None));
            entry.0 += 1;
            if !s.busy && entry.1.is_none() {
                entry.1 = Some(id);
            }
        }
        counts
            .values()
            .filter_map(|&(count, oldest)| oldest.map(|id| (count, id)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }
}

/// A connection's slot in the table, released when dropped.
#[derive(Debug)]
pub struct Ticket {
    /// The table.
    admission: Arc<Admission>,
    /// The slot's id.
    id: u64,
    /// Its eviction signal.
    signal: Arc<Signal>,
}

impl Ticket {
    /// Marks the connection as running a request (`true`, so it is never closed to make room)
    /// or not. Returns false when it has already been closed to make room.
    pub fn set_busy(&self, busy: bool) -> bool {
        match self.admission.table().slots.get_mut(&self.id) {
            Some(slot) => {
                slot.busy = busy;
                true
            }
            None => false,
        }
    }

    /// True once the connection has been chosen to make room for another.
    pub fn is_evicted(&self) -> bool {
        self.signal.evicted.load(Ordering::SeqCst)
    }

    /// Completes once the connection has been chosen to make room for another. Cancel-safe.
    pub async fn evicted(&self) {
        loop {
            let notified = self.signal.notify.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.table().slots.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket whose peer is alive (its other end is kept open).
    fn live() -> RawFd {
        use std::os::fd::AsRawFd;
        thread_local! {
            static PAIR: (std::os::unix::net::UnixStream, std::os::unix::net::UnixStream) =
                std::os::unix::net::UnixStream::pair().unwrap();
        }
        PAIR.with(|(ours, _theirs)| ours.as_raw_fd())
    }

    fn admitted(a: &Arc<Admission>, uid: u32) -> (Ticket, Option<u32>) {
        admitted_on(a, uid, live())
    }

    fn admitted_on(a: &Arc<Admission>, uid: u32, fd: RawFd) -> (Ticket, Option<u32>) {
        match a.admit(uid, fd) {
            Admit::Admitted { ticket, evicted } => (ticket, evicted),
            Admit::Refused(why) => panic!("refused: {why}"),
        }
    }

    #[test]
    fn a_user_at_its_cap_pushes_out_its_own_oldest_idle_connection() {
        let a = Admission::new();
        let mut tickets: Vec<Ticket> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| admitted(&a, 1000).0)
            .collect();
        // The oldest is running a request: the second oldest gives way.
        assert!(tickets[0].set_busy(true));
        let (newest, evicted) = admitted(&a, 1000);
        assert_eq!(evicted, Some(1000));
        assert!(!tickets[0].is_evicted());
        assert!(tickets[1].is_evicted());
        assert!(
            !tickets[1].set_busy(true),
            "an evicted connection stays out"
        );
        assert_eq!(a.len(), MAX_CONNECTIONS_PER_UID);
        // Another user is not affected.
        let (_other, evicted) = admitted(&a, 2000);
        assert_eq!(evicted, None);
        // Every connection of the user running a request: refused, naming the cap.
        for t in &tickets[2..] {
            assert!(t.set_busy(true));
        }
        assert!(newest.set_busy(true));
        match a.admit(1000, live()) {
            Admit::Refused(why) => assert!(why.contains("per user"), "{why}"),
            Admit::Admitted { .. } => panic!("admitted past the cap"),
        }
        tickets.clear();
        drop(newest);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn at_the_total_cap_the_biggest_user_gives_way() {
        let a = Admission::new();
        let mut tickets = Vec::new();
        // User 1 has the most connections (its cap), users 2 to 4 one fewer, 5 to 7 one each.
        let mut users = vec![1; MAX_CONNECTIONS_PER_UID];
        for uid in 2..=4 {
            users.extend(std::iter::repeat_n(uid, MAX_CONNECTIONS_PER_UID - 1));
        }
        users.extend(5..=7);
        assert_eq!(users.len(), MAX_CONNECTIONS);
        for uid in users {
            tickets.push(admitted(&a, uid).0);
        }
        assert_eq!(a.len(), MAX_CONNECTIONS);
        let (new, evicted) = admitted(&a, 5);
        assert_eq!(evicted, Some(1));
        assert!(tickets[0].is_evicted(), "user 1's oldest");
        assert_eq!(a.len(), MAX_CONNECTIONS);
        // Everyone running a request: refused, naming the cap.
        assert!(new.set_busy(true));
        for t in &tickets[1..] {
            assert!(t.set_busy(true));
        }
        match a.admit(6, live()) {
            Admit::Refused(why) => assert!(why.contains("all running requests"), "{why}"),
            Admit::Admitted { .. } => panic!("admitted past the cap"),
        }
        // A connection that ends frees its slot.
        tickets.truncate(1);
        assert!(matches!(
            a.admit(6, live()),
            Admit::Admitted { evicted: None, .. }
        ));
    }

    /// A connection whose client already hung up gives way before older live ones.
    #[test]
    fn a_hung_up_connection_gives_way_first() {
        use std::os::fd::AsRawFd;
        let a = Admission::new();
        let mut tickets: Vec<Ticket> = (0..MAX_CONNECTIONS_PER_UID - 1)
            .map(|_| admitted(&a, 9).0)
            .collect();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        tickets.push(admitted_on(&a, 9, ours.as_raw_fd()).0);
        drop(theirs);
        let (_new, evicted) = admitted(&a, 9);
        assert_eq!(evicted, Some(9));
        assert!(tickets.last().unwrap().is_evicted(), "the hung-up one");
        assert!(!tickets[0].is_evicted(), "not the oldest live one");
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection() {
        let a = Admission::new();
        let tickets: Vec<Ticket> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| admitted(&a, 7).0)
            .collect();
        let first = &tickets[0];
        let waiting = first.evicted();
        let (_new, _) = admitted(&a, 7);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken");
    }
}
