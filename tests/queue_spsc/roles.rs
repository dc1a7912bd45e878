//! Roles in one process: refusal naming the holder, release on drop, takeover
//! from a dead attachment without losing or repeating a message.

use shmkit::queue::SpscQueue;
use shmkit::{Error, SegmentOptions};

#[test]
fn second_producer_is_refused_naming_the_holder() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let _tx = theirs.producer().unwrap();
    match q.producer() {
        Err(Error::RoleTaken { role, holder, slot }) => {
            assert_eq!(role, "producer");
            assert_eq!(holder, peer.owner_tag().bits());
            assert_eq!(slot, peer.slot());
        }
        other => panic!("{other:?}"),
    }
    // The other role is free, and taking it twice in one attachment is refused too.
    let _rx = q.consumer().unwrap();
    match q.consumer() {
        Err(Error::RoleTaken { role, slot, .. }) => {
            assert_eq!(role, "consumer");
            assert_eq!(slot, seg.slot());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dropping_a_role_handle_releases_the_role() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let mut tx = theirs.producer().unwrap();
    tx.try_push(1).unwrap();
    drop(tx);
    let mut tx = q.producer().unwrap();
    assert_eq!(tx.position(), 1);
    tx.try_push(2).unwrap();
    let mut rx = q.consumer().unwrap();
    assert_eq!(rx.pop().unwrap(), Some(1));
    assert_eq!(rx.pop().unwrap(), Some(2));
}

#[test]
fn a_dead_producers_role_is_taken_over_after_its_last_published_message() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 8).unwrap();
    let mut rx = q.consumer().unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let mut tx = theirs.producer().unwrap();
    for v in 0..5 {
        tx.try_push(v).unwrap();
    }
    assert_eq!(rx.pop().unwrap(), Some(0));
    tx.simulate_death();
    drop(theirs);
    peer.simulate_crash();
    let mut tx = q.producer().unwrap();
    assert_eq!(tx.position(), 5);
    tx.try_push(5).unwrap();
    for v in 1..6 {
        assert_eq!(rx.pop().unwrap(), Some(v));
    }
    assert_eq!(rx.pop().unwrap(), None);
}

#[test]
fn a_dead_consumers_role_is_taken_over_at_its_first_unreleased_message() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 8).unwrap();
    let mut tx = q.producer().unwrap();
    tx.push_slice(&[10, 11, 12, 13]).unwrap();
    let peer = seg.try_clone().unwrap();
    let theirs = peer.find::<SpscQueue<u64>>("q").unwrap();
    let mut rx = theirs.consumer().unwrap();
    assert_eq!(rx.pop().unwrap(), Some(10));
    assert_eq!(rx.pop().unwrap(), Some(11));
    rx.simulate_death();
    drop(theirs);
    peer.simulate_crash();
    let mut rx = q.consumer().unwrap();
    assert_eq!(rx.position(), 2);
    assert_eq!(rx.pop().unwrap(), Some(12));
    assert_eq!(rx.pop().unwrap(), Some(13));
    assert_eq!(rx.pop().unwrap(), None);
}

#[test]
fn role_words_naming_nobody_or_a_slot_out_of_range_are_taken_over() {
    let seg = SegmentOptions::heap().create().unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 2).unwrap();
    let out_of_range = shmkit::OwnerTag::new(0xfff0, 0x1234_5678).unwrap().bits();
    let nobody = 0xffff << 46; // a slot, but no incarnation
    for (p, c) in [(out_of_range, nobody), (nobody, out_of_range | (3 << 62))] {
        shmkit::testkit::spsc_set_roles(&q, p, c);
        let tx = q.producer().unwrap();
        let rx = q.consumer().unwrap();
        drop((tx, rx));
    }
}

/// Review regression: a forked child that inherited the role handles could push
/// and pop through them and, dropping them, give the parent's live roles back (a
/// second producer could then claim). In the child they act for nobody.
#[test]
fn handles_inherited_by_a_forked_child_neither_act_nor_free_the_roles() {
    let seg = SegmentOptions::anonymous()
        .max_size(8 << 20)
        .create()
        .unwrap();
    let q = seg.find_or_create::<SpscQueue<u64>>("q", 4).unwrap();
    let (mut tx, mut rx) = (q.producer().unwrap(), q.consumer().unwrap());
    tx.try_push(1).unwrap();
    // SAFETY: the child only calls the handles (atomics, no lock a parent thread
    // could hold) and drops them, then leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let push = matches!(
            tx.try_push(2),
            Err(shmkit::queue::PushError::Failed(2, Error::NotAttached))
        );
        let pop = matches!(rx.pop(), Err(Error::NotAttached));
        drop((tx, rx)); // must not give the parent's roles back
        // SAFETY: leaving the forked child without the parent's destructors.
        unsafe { libc::_exit(i32::from(!push) | i32::from(!pop) << 1) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child did not exit");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "1: the child pushed, 2: it popped"
    );
    assert!(
        matches!(q.producer(), Err(Error::RoleTaken { .. })),
        "producer role freed"
    );
    assert!(
        matches!(q.consumer(), Err(Error::RoleTaken { .. })),
        "consumer role freed"
    );
    assert_eq!(rx.pop().unwrap(), Some(1), "the child took nothing");
    assert_eq!(rx.pop().unwrap(), None);
}
