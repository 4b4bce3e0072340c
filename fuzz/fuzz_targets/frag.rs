//! `Reassembly` driven by an arbitrary sequence of fragments, clock steps and timeouts.
//! Checks that it never panics and that what it reports is consistent: a sequence completes
//! only on a last fragment, never exceeds the size limit, and leaves nothing pending.
#![no_main]

use std::time::{Duration, Instant};

use ferrosocks_proto::frag::{DropReason, FragOutcome, Reassembly, MAX_REASSEMBLED_LEN};
use ferrosocks_proto::{Addr, Frag};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fn drive(u: &mut Unstructured<'_>) -> Result<()> {
    let timeout = Duration::from_millis(u.arbitrary()?);
    let timeout = if u.arbitrary()? {
        timeout
    } else {
        Duration::from_secs(u.arbitrary()?)
    };
    let mut queue = Reassembly::new(timeout);
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    let destinations: [Addr; 2] = [
        "192.0.2.1:53".parse().unwrap(),
        "a.example:53".parse().unwrap(),
    ];
    // Payloads are sliced from one buffer; a length near the limit reaches TooLarge.
    let big = vec![0xa5u8; MAX_REASSEMBLED_LEN + 1];

    while !u.is_empty() {
        elapsed += Duration::from_millis(u.int_in_range(0..=8_000)?);
        let Some(now) = start.checked_add(elapsed) else {
            return Ok(());
        };
        let frag = Frag(u.arbitrary()?);
        let dst = &destinations[usize::from(u.arbitrary::<bool>()?)];
        let len = match u.int_in_range(0..=9)? {
            0 => u.int_in_range(0..=MAX_REASSEMBLED_LEN + 1)?,
            _ => u.int_in_range(0..=64)?,
        };
        if u.ratio(1, 16)? {
            queue.expire(now);
        }
        let outcome = queue.push(now, frag, dst, &big[..len]);
        match &outcome {
            FragOutcome::Standalone => {
                assert!(frag.is_standalone());
                assert!(!queue.is_pending());
            }
            FragOutcome::Queued => {
                assert!(!frag.is_last() && frag.position() != 0);
                assert!(queue.is_pending());
                if let Some(deadline) = queue.deadline() {
                    assert!(deadline > now);
                }
            }
            FragOutcome::Complete(_, data) => {
                assert!(frag.is_last());
                assert!(data.len() <= MAX_REASSEMBLED_LEN);
                assert!(!queue.is_pending());
            }
            FragOutcome::Dropped(DropReason::InvalidPosition) => assert_eq!(frag.position(), 0),
            FragOutcome::Dropped(DropReason::Incomplete) => {
                assert!(frag.is_last());
                assert!(!queue.is_pending());
            }
            FragOutcome::Dropped(DropReason::TooLarge) => assert!(!queue.is_pending()),
            FragOutcome::Dropped(DropReason::Duplicate) => assert!(queue.is_pending()),
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = drive(&mut Unstructured::new(data));
});
