//! UDP fragment reassembly, as RFC 1928 §7 describes it.
//!
//! One [`Reassembly`] queue exists per association. Time is passed in: the caller owns the
//! clock, so the queue is deterministic under test.
//!
//! The rules implemented, in the RFC's words where it has them:
//! - FRAG `X'00'` is standalone; its arrival is "a new datagram carrying a FRAG field whose
//!   value is less than the highest FRAG value processed", so it abandons a pending sequence.
//! - Positions `1..=127`; the high bit marks the end of the sequence.
//! - The queue is reinitialised when the timer expires or when a fragment arrives whose
//!   position is lower than the highest processed; that fragment then starts a new sequence.
//! - The timer starts with the first fragment of a sequence and is never shorter than 5 s.
//! - A sequence is delivered only when it ends and every position from 1 up to the last was
//!   received; otherwise it is dropped silently, as §7 says the relay does with anything it
//!   will not relay. A repeated position is dropped.

use std::time::{Duration, Instant};

use crate::addr::Addr;
use crate::udp::Frag;

/// The shortest reassembly timer RFC 1928 §7 allows.
pub const MIN_REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most payload one reassembled datagram may carry: the largest UDP payload.
pub const MAX_REASSEMBLED_LEN: usize = 65_507;

/// What became of a datagram handed to [`Reassembly::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum FragOutcome {
    /// FRAG was `X'00'`: relay the datagram's own payload as it is.
    Standalone,
    /// The fragment was queued; nothing to relay yet.
    Queued,
    /// The sequence is complete: relay this payload to this destination.
    Complete(Addr, Vec<u8>),
    /// The fragment (and possibly its sequence) was abandoned.
    Dropped(DropReason),
}

/// Why a fragment was not queued or a sequence not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A position already received in this sequence.
    Duplicate,
    /// The sequence ended with positions missing.
    Incomplete,
    /// The reassembled payload would exceed [`MAX_REASSEMBLED_LEN`].
    TooLarge,
    /// FRAG `X'80'`: end of sequence at position 0, which cannot exist.
    InvalidPosition,
}

/// A reassembly queue and its timer.
#[derive(Debug)]
pub struct Reassembly {
    timeout: Duration,
    dst: Option<Addr>,
    fragments: Vec<Vec<u8>>,
    highest: u8,
    len: usize,
    deadline: Option<Instant>,
}

impl Reassembly {
    /// A queue whose timer is `timeout`, raised to 5 s if shorter.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout: timeout.max(MIN_REASSEMBLY_TIMEOUT),
            dst: None,
            fragments: Vec::new(),
            highest: 0,
            len: 0,
            deadline: None,
        }
    }

    /// When the pending sequence will be abandoned, if one is pending and its timer is
    /// within the clock's range.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether a sequence is pending.
    pub fn is_pending(&self) -> bool {
        self.highest != 0
    }

    /// Abandons the pending sequence, if any.
    pub fn reset(&mut self) {
        self.dst = None;
        self.fragments.clear();
        self.highest = 0;
        self.len = 0;
        self.deadline = None;
    }

    /// Abandons the pending sequence if its timer has expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.reset();
        }
    }

    /// Handles one datagram's FRAG, destination and payload at time `now`.
    pub fn push(&mut self, now: Instant, frag: Frag, dst: &Addr, payload: &[u8]) -> FragOutcome {
        self.expire(now);
        if frag.is_standalone() {
            self.reset();
            return FragOutcome::Standalone;
        }
        let position = frag.position();
        if position == 0 {
            self.reset();
            return FragOutcome::Dropped(DropReason::InvalidPosition);
        }
        if position < self.highest {
            self.reset();
        } else if position == self.highest {
            return FragOutcome::Dropped(DropReason::Duplicate);
        }
        if self.len + payload.len() > MAX_REASSEMBLED_LEN {
            self.reset();
            return FragOutcome::Dropped(DropReason::TooLarge);
        }
        if self.highest == 0 {
            // A timer too long for the clock to represent never fires (`Instant + Duration`
            // panics on overflow, and the timeout comes from configuration).
            self.deadline = now.checked_add(self.timeout);
            self.dst = Some(dst.clone());
        }
        self.highest = position;
        self.len += payload.len();
        self.fragments.push(payload.to_vec());
        if !frag.is_last() {
            return FragOutcome::Queued;
        }
        // Positions only ever increase within a sequence, so it is gap-free exactly when
        // it holds as many fragments as the last position.
        let complete = self.fragments.len() == usize::from(position);
        let dst = self.dst.take();
        let fragments = std::mem::take(&mut self.fragments);
        let len = self.len;
        self.reset();
        match (complete, dst) {
            (true, Some(dst)) => {
                let mut data = Vec::with_capacity(len);
                for f in fragments {
                    data.extend_from_slice(&f);
                }
                FragOutcome::Complete(dst, data)
            }
            _ => FragOutcome::Dropped(DropReason::Incomplete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst() -> Addr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn three_fragments_in_order_are_joined() {
        let mut q = Reassembly::new(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(
            q.push(t, Frag::fragment(1, false), &dst(), b"ab"),
            FragOutcome::Queued
        );
        assert_eq!(
            q.push(t, Frag::fragment(2, false), &dst(), b"cd"),
            FragOutcome::Queued
        );
        assert_eq!(
            q.push(t, Frag::fragment(3, true), &dst(), b"e"),
            FragOutcome::Complete(dst(), b"abcde".to_vec())
        );
        assert!(!q.is_pending());
    }

    #[test]
    fn lower_position_restarts_the_sequence() {
        let mut q = Reassembly::new(Duration::from_secs(5));
        let t = Instant::now();
        q.push(t, Frag::fragment(1, false), &dst(), b"old1");
        q.push(t, Frag::fragment(2, false), &dst(), b"old2");
        assert_eq!(
            q.push(t, Frag::fragment(1, false), &dst(), b"new1"),
            FragOutcome::Queued
        );
        assert_eq!(
            q.push(t, Frag::fragment(2, true), &dst(), b"new2"),
            FragOutcome::Complete(dst(), b"new1new2".to_vec())
        );
    }

    #[test]
    fn gap_drops_the_sequence() {
        let mut q = Reassembly::new(Duration::from_secs(5));
        let t = Instant::now();
        q.push(t, Frag::fragment(1, false), &dst(), b"a");
        assert_eq!(
            q.push(t, Frag::fragment(3, true), &dst(), b"c"),
            FragOutcome::Dropped(DropReason::Incomplete)
        );
    }

    #[test]
    fn timer_expiry_abandons_the_queue_and_is_at_least_five_seconds() {
        let mut q = Reassembly::new(Duration::from_millis(10));
        let t = Instant::now();
        q.push(t, Frag::fragment(1, false), &dst(), b"a");
        assert_eq!(q.deadline(), Some(t + MIN_REASSEMBLY_TIMEOUT));
        let later = t + Duration::from_secs(6);
        assert_eq!(
            q.push(later, Frag::fragment(2, true), &dst(), b"b"),
            FragOutcome::Dropped(DropReason::Incomplete)
        );
    }

    #[test]
    fn standalone_abandons_pending_sequence() {
        let mut q = Reassembly::new(Duration::from_secs(5));
        let t = Instant::now();
        q.push(t, Frag::fragment(1, false), &dst(), b"a");
        assert_eq!(
            q.push(t, Frag::STANDALONE, &dst(), b"x"),
            FragOutcome::Standalone
        );
        assert!(!q.is_pending());
    }

    #[test]
    fn duplicate_and_oversize_fragments_are_dropped() {
        let mut q = Reassembly::new(Duration::from_secs(5));
        let t = Instant::now();
        q.push(t, Frag::fragment(1, false), &dst(), b"a");
        assert_eq!(
            q.push(t, Frag::fragment(1, false), &dst(), b"a"),
            FragOutcome::Dropped(DropReason::Duplicate)
        );
        let big = vec![0u8; MAX_REASSEMBLED_LEN];
        assert_eq!(
            q.push(t, Frag::fragment(2, false), &dst(), &big),
            FragOutcome::Dropped(DropReason::TooLarge)
        );
        assert_eq!(
            q.push(t, Frag(0x80), &dst(), b"z"),
            FragOutcome::Dropped(DropReason::InvalidPosition)
        );
    }
}
