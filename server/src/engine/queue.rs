//! The bounded request queue of one plugin: one `crossbeam-channel` per priority class, each
//! holding at most `depth` requests. Admission never blocks: a full class is refused at once.
//! The scheduler always takes from the highest non-empty class, in arrival order within it.

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};

/// A request's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Taken before everything else.
    High = 0,
    /// The default.
    Normal = 1,
    /// Taken only when nothing else waits.
    Low = 2,
}

impl Priority {
    /// The class of an OpenAI-style integer priority: above 0 is high, 0 normal, below 0 low.
    pub fn from_level(level: i64) -> Self {
        match level.signum() {
            1 => Priority::High,
            0 => Priority::Normal,
            _ => Priority::Low,
        }
    }
}

const CLASSES: usize = 3;

/// The admission side, shared by request handlers.
#[derive(Debug)]
pub struct QueueSender<T> {
    classes: [Sender<T>; CLASSES],
    depth: usize,
}

/// The scheduler's side; a clone takes from the same queue (a replacement scheduler does).
#[derive(Debug)]
pub struct QueueReceiver<T> {
    classes: [Receiver<T>; CLASSES],
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// Its class already holds `depth` requests.
    Full,
    /// The scheduler is gone.
    Closed,
}

/// A queue holding at most `depth` requests per priority class.
pub fn bounded<T>(depth: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let channels: [(Sender<T>, Receiver<T>); CLASSES] =
        std::array::from_fn(|_| crossbeam_channel::bounded(depth));
    let [(s0, r0), (s1, r1), (s2, r2)] = channels;
    (
        QueueSender {
            classes: [s0, s1, s2],
            depth,
        },
        QueueReceiver {
            classes: [r0, r1, r2],
        },
    )
}

impl<T> QueueSender<T> {
    /// Admits `item` with `priority`, or refuses it at once.
    pub fn admit(&self, priority: Priority, item: T) -> Result<(), Refused> {
        self.classes[priority as usize]
            .try_send(item)
            .map_err(|e| match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Closed,
            })
    }

    /// Requests waiting, over all classes.
    pub fn len(&self) -> usize {
        self.classes.iter().map(Sender::len).sum()
    }

    /// The capacity of each class.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

// By hand: a derive would require `T: Clone`, which receiving does not need.
impl<T> Clone for QueueReceiver<T> {
    fn clone(&self) -> Self {
        Self {
            classes: self.classes.clone(),
        }
    }
}

impl<T> QueueReceiver<T> {
    /// The next request, highest class first; blocks while all are empty. `None` once every
    /// sender is gone and nothing is left.
    pub fn next(&self) -> Option<T> {
        loop {
            match self.try_next() {
                Waiting::Ready(item) => return Some(item),
                Waiting::Closed => return None,
                Waiting::Empty => {}
            }
            // Wait until any class has something (or closes), then look again in order.
            let mut select = Select::new();
            for class in &self.classes {
                select.recv(class);
            }
            select.ready();
        }
    }

    /// The next request, highest class first, without waiting.
    pub fn try_next(&self) -> Waiting<T> {
        let mut open = false;
        for class in &self.classes {
            match class.try_recv() {
                Ok(item) => return Waiting::Ready(item),
                Err(TryRecvError::Empty) => open = true,
                Err(TryRecvError::Disconnected) => {}
            }
        }
        if open {
            Waiting::Empty
        } else {
            Waiting::Closed
        }
    }
}

/// What [`QueueReceiver::try_next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Waiting<T> {
    /// The next request.
    Ready(T),
    /// Nothing waits now.
    Empty,
    /// Nothing waits and every sender is gone.
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_classes_first_fifo_within_a_class() {
        let (tx, rx) = bounded(4);
        tx.admit(Priority::Low, "low").unwrap();
        tx.admit(Priority::Normal, "normal 1").unwrap();
        tx.admit(Priority::High, "high").unwrap();
        tx.admit(Priority::Normal, "normal 2").unwrap();
        assert_eq!(tx.len(), 4);
        let order: Vec<_> =
            std::iter::from_fn(|| (tx.len() > 0).then(|| rx.next().unwrap())).collect();
        assert_eq!(order, ["high", "normal 1", "normal 2", "low"]);
    }

    #[test]
    fn a_full_class_refuses_at_once_and_others_still_admit() {
        let (tx, _rx) = bounded(1);
        tx.admit(Priority::Normal, 1).unwrap();
        assert!(matches!(tx.admit(Priority::Normal, 2), Err(Refused::Full)));
        tx.admit(Priority::High, 3).unwrap();
    }

    #[test]
    fn ends_when_senders_are_gone() {
        let (tx, rx) = bounded(2);
        tx.admit(Priority::Normal, 1).unwrap();
        assert_eq!(rx.try_next(), Waiting::Ready(1));
        assert_eq!(rx.try_next(), Waiting::Empty);
        tx.admit(Priority::Low, 2).unwrap();
        drop(tx);
        assert_eq!(rx.next(), Some(2));
        assert_eq!(rx.next(), None);
        assert_eq!(rx.try_next(), Waiting::Closed);
    }

    #[test]
    fn priority_levels_map_to_classes() {
        assert_eq!(Priority::from_level(5), Priority::High);
        assert_eq!(Priority::from_level(0), Priority::Normal);
        assert_eq!(Priority::from_level(-1), Priority::Low);
    }
}
