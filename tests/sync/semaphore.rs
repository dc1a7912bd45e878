//! `Semaphore`, plain and with a ledger: counting, waking, dead holders' permits, crash
//! repair from the ledger, processes.

use super::*;

#[test]
fn a_semaphore_counts_its_permits() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = place(&seg, SEM, Semaphore::new(3));
    assert_eq!(s.available(), 3);
    s.acquire(&seg).unwrap();
    s.try_acquire(&peer).unwrap();
    s.acquire_for(&peer, Duration::ZERO).unwrap();
    assert_eq!(s.available(), 0);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    );
    let t = Instant::now();
    assert_eq!(
        s.acquire_for(&peer, Duration::from_millis(30)),
        Err(SemaphoreError::TimedOut)
    );
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        s.acquire_until(&peer, Instant::now()),
        Err(SemaphoreError::TimedOut)
    );
    // Plain: anyone returns any number; nobody is on record.
    s.release(&peer, 2).unwrap();
    assert_eq!(s.available(), 2);
    s.release(&seg, 0).unwrap();
    assert_eq!(s.release(&seg, u32::MAX), Err(SemaphoreError::Overflow));
    assert_eq!(s.available(), 2);
    assert_eq!(s.held_by(seg.owner_tag()), 0);
    // A huge timeout means no deadline, not a panic.
    s.acquire_for(&seg, Duration::MAX).unwrap();
    assert_eq!(s.available(), 1);
}

#[test]
fn a_ledger_semaphore_counts_permits_per_holder() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = place(&seg, LSEM, LedgerSem::with_ledger(3));
    s.acquire(&seg).unwrap();
    s.try_acquire(&peer).unwrap();
    s.acquire_for(&peer, Duration::ZERO).unwrap();
    assert_eq!(s.available(), 0);
    assert_eq!(s.held_by(seg.owner_tag()), 1);
    assert_eq!(s.held_by(peer.owner_tag()), 2);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::ZERO),
        Err(SemaphoreError::TimedOut)
    );
    assert_eq!(
        s.acquire_for(&seg, Duration::from_millis(30)),
        Err(SemaphoreError::TimedOut)
    );
    s.release(&peer, 2).unwrap();
    assert_eq!(s.held_by(peer.owner_tag()), 0);
    assert_eq!(s.available(), 2);
    s.release(&seg, 1).unwrap();
    assert_eq!(s.available(), 3);
}

#[test]
fn releasing_permits_a_handle_does_not_hold_is_refused() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    let s = at::<LedgerSem>(&seg, LSEM);
    assert_eq!(s.release(&seg, 1), Err(SemaphoreError::NotHeld));
    s.acquire(&seg).unwrap();
    // Not more than it holds, and not someone else's.
    assert_eq!(s.release(&seg, 2), Err(SemaphoreError::NotHeld));
    assert_eq!(s.release(&peer, 1), Err(SemaphoreError::NotHeld));
    assert_eq!(s.held_by(seg.owner_tag()), 1);
    assert_eq!(s.available(), PERMITS - 1);
    s.release(&seg, 1).unwrap();
    assert_eq!(s.release(&seg, 1), Err(SemaphoreError::NotHeld));
    assert_eq!(s.available(), PERMITS);
}

#[test]
fn a_handle_outside_the_ledger_is_refused() {
    let seg = SegmentOptions::heap()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(8)
        .create()
        .unwrap();
    let handles = clones(&seg, 3);
    let s = place(&seg, 0, Semaphore::<2>::with_ledger(4));
    let all: Vec<&Segment> = std::iter::once(&seg).chain(&handles).collect();
    let outside = *all
        .iter()
        .find(|h| h.slot() >= 2)
        .expect("4 slots, 2 entries");
    let inside = *all.iter().find(|h| h.slot() < 2).unwrap();
    let refused = SemaphoreError::SlotOutsideLedger {
        slot: outside.slot(),
        ledger: 2,
    };
    assert_eq!(s.try_acquire(outside), Err(refused));
    assert_eq!(s.acquire(outside), Err(refused));
    assert_eq!(s.acquire_for(outside, Duration::ZERO), Err(refused));
    assert_eq!(
        s.acquire_for(outside, Duration::from_millis(10)),
        Err(refused)
    );
    assert_eq!(s.release(outside, 1), Err(refused));
    assert_eq!(s.held_by(outside.owner_tag()), 0);
    assert_eq!(s.available(), 4);
    assert!(refused.to_string().contains(&outside.slot().to_string()));
    // Handles inside the ledger are served as usual.
    s.acquire(inside).unwrap();
    assert_eq!(s.held_by(inside.owner_tag()), 1);
    assert_eq!(s.available(), 3);
}

/// Two waiters sleep on an exhausted semaphore of `PERMITS` (2) permits held by
/// `seg`, until `seg` releases both.
fn a_release_wakes_two_sleepers<const L: usize>(seg: &Segment, s: &Semaphore<L>) {
    s.acquire(seg).unwrap();
    s.acquire(seg).unwrap();
    let [a, b] = [0, 1].map(|_| seg.try_clone().unwrap());
    std::thread::scope(|sc| {
        let waiters: Vec<_> = [&a, &b]
            .into_iter()
            .map(|h| sc.spawn(move || s.acquire_for(h, Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        s.release(seg, PERMITS).unwrap();
        for w in waiters {
            assert_eq!(w.join().unwrap(), Ok(()));
        }
    });
    assert_eq!(s.available(), 0);
}

#[test]
fn a_release_wakes_sleeping_acquirers() {
    let _dog = watchdog("a_release_wakes_sleeping_acquirers");
    let seg = heap_with_everything();
    a_release_wakes_two_sleepers(&seg, at::<Semaphore>(&seg, SEM));
    a_release_wakes_two_sleepers(&seg, at::<LedgerSem>(&seg, LSEM));
}

/// Takes and returns a permit of the semaphore at cell `sem` `rounds` times through
/// `h`, by every flavour of acquire, counting the holders at cell [`INSIDE`] and the
/// most at once at [`MOST`]: more than [`PERMITS`] at once fails.
pub(super) fn use_permits<const L: usize>(h: &Segment, sem: u64, rounds: u64) {
    let s = at::<Semaphore<L>>(h, sem);
    let inside = at::<AtomicU32>(h, INSIDE);
    let most = at::<AtomicU32>(h, MOST);
    for i in 0..rounds {
        match i % 3 {
            0 => s.acquire(h).unwrap(),
            1 => s.acquire_for(h, Duration::from_secs(10)).unwrap(),
            _ => loop {
                match s.try_acquire(h) {
                    Ok(()) => break,
                    Err(SemaphoreError::WouldBlock) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            },
        }
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        assert!(now <= PERMITS, "{now} holders of {PERMITS} permits");
        spin(50);
        inside.fetch_sub(1, Ordering::SeqCst);
        s.release(h, 1).unwrap();
    }
}

fn threads_never_exceed_the_permits<const L: usize>(sem: u64) {
    let seg = heap_with_everything();
    let handles = clones(&seg, 4);
    std::thread::scope(|s| {
        for h in &handles {
            s.spawn(move || use_permits::<L>(h, sem, 3000));
        }
    });
    let most = at::<AtomicU32>(&seg, MOST).load(Ordering::SeqCst);
    assert!((1..=PERMITS).contains(&most), "{most}");
    let s = at::<Semaphore<L>>(&seg, sem);
    assert_eq!(s.available(), PERMITS);
    for h in &handles {
        assert_eq!(s.held_by(h.owner_tag()), 0);
    }
}

#[test]
fn threads_never_exceed_the_permits_of_a_plain_semaphore() {
    let _dog = watchdog("threads_never_exceed_the_permits_of_a_plain_semaphore");
    threads_never_exceed_the_permits::<0>(SEM);
}

#[test]
fn threads_never_exceed_the_permits_of_a_ledger_semaphore() {
    let _dog = watchdog("threads_never_exceed_the_permits_of_a_ledger_semaphore");
    threads_never_exceed_the_permits::<128>(LSEM);
}

#[test]
fn a_crashed_holders_permits_come_back() {
    let _dog = watchdog("a_crashed_holders_permits_come_back");
    let seg = heap_with_everything();
    let [holder, waiter] = [0, 1].map(|_| seg.try_clone().unwrap());
    let s = at::<LedgerSem>(&seg, LSEM);
    s.acquire(&holder).unwrap();
    s.acquire(&holder).unwrap();
    let dead = holder.owner_tag();
    assert_eq!(s.held_by(dead), 2);
    // The holder is alive: nothing to take back.
    assert_eq!(s.try_acquire(&waiter), Err(SemaphoreError::WouldBlock));
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.acquire_for(&waiter, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(20));
        holder.simulate_crash(); // dies holding both permits
        assert_eq!(w.join().unwrap(), Ok(()));
    });
    assert_eq!(s.held_by(dead), 0);
    assert_eq!(s.held_by(waiter.owner_tag()), 1);
    assert_eq!(s.available(), 1);
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.available(), 0);
    // A holder that detaches without releasing counts as dead too.
    s.release(&seg, 1).unwrap();
    let leaver = seg.try_clone().unwrap();
    s.acquire(&leaver).unwrap();
    assert!(leaver.detach());
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.held_by(seg.owner_tag()), 1);
}

#[test]
fn a_plain_semaphore_does_not_return_a_dead_holders_permits() {
    let seg = heap_with_everything();
    let holder = seg.try_clone().unwrap();
    let s = place(&seg, SEM, Semaphore::new(1));
    s.acquire(&holder).unwrap();
    holder.simulate_crash();
    // As documented: without a ledger nobody knows who held what.
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    assert_eq!(
        s.acquire_for(&seg, Duration::from_millis(10)),
        Err(SemaphoreError::TimedOut)
    );
    assert_eq!(s.available(), 0);
}

#[test]
fn a_ledger_operation_cut_short_by_a_crash_is_repaired_from_the_ledger() {
    let seg = heap_with_everything();
    let peer = seg.try_clone().unwrap();
    // Layout (repr(C)): count: u32 at 0, sleepers, total, reserved, then the
    // ledger's Mutex<()>, whose lock word is its first field, at 16.
    assert_eq!(size_of::<LedgerSem>(), 32 + 8 * 128);
    let s = place(&seg, LSEM, LedgerSem::with_ledger(3));
    s.acquire(&peer).unwrap(); // count 2, the ledger says the peer holds 1
    // The peer dies inside a second acquire, holding the ledger lock, after taking
    // a permit from the count and before writing it in the ledger.
    let base = seg.user_offset() + 64 * LSEM;
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(Offset::<u32>::new(base), 1) }.unwrap();
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.write(Offset::<u64>::new(base + 16), peer.owner_tag().bits()) }.unwrap();
    let dead = peer.owner_tag();
    peer.simulate_crash();
    assert_eq!(s.available(), 1);
    // The next caller takes the ledger lock over and rebuilds the count from the
    // ledger: 3 - 1 = 2, no permit lost...
    s.acquire(&seg).unwrap();
    assert_eq!(s.available(), 1);
    s.acquire(&seg).unwrap();
    assert_eq!(s.available(), 0);
    // ...and the one the dead peer had on record comes back when none is left.
    assert_eq!(s.held_by(dead), 1);
    s.try_acquire(&seg).unwrap();
    assert_eq!(s.held_by(dead), 0);
    assert_eq!(s.held_by(seg.owner_tag()), 3);
    assert_eq!(s.available(), 0);
    s.release(&seg, 3).unwrap();
    assert_eq!(s.available(), 3);
}

/// Found by `prop_sync`'s ledger model. `Semaphore::release` stores the caller's
/// ledger entry even when it names a dead previous holder of the slot: with `n = 0`
/// the check `held (0) >= n` passes and the dead holder's permits are overwritten,
/// neither in the count nor on record, lost for good.
#[test]
fn a_release_of_nothing_by_a_dead_holders_heir_loses_no_permit() {
    let seg = SegmentOptions::heap()
        .no_heap()
        .max_size(1 << 20)
        .committed(64 << 10)
        .registry_slots(2)
        .create()
        .unwrap();
    let s = place(&seg, 0, Semaphore::<2>::with_ledger(2));
    let holder = seg.try_clone().unwrap();
    s.acquire(&holder).unwrap();
    s.acquire(&holder).unwrap();
    let dead = holder.owner_tag();
    holder.simulate_crash();
    // The registry is full: the dead slot is reclaimed and given to the heir.
    let heir = seg.try_clone().unwrap();
    assert_eq!(heir.slot(), dead.slot());
    assert_eq!(s.release(&heir, 0), Ok(()));
    // Both permits can still be had.
    assert_eq!(s.try_acquire(&seg), Ok(()));
    assert_eq!(s.try_acquire(&heir), Ok(()));
    assert_eq!(s.available(), 0);
}

/// Sleepers counted in the semaphore at cell `index`: its second `u32` (the type
/// is `repr(C)`: `count`, then `sleepers`).
/// 1 if the semaphore's count word says someone may sleep on it (bit 31).
fn semaphore_sleepers(seg: &Segment, index: u64) -> u32 {
    // SAFETY: this test views each offset as one type only.
    unsafe { seg.read(cell::<[u32; 2]>(seg, index)) }.unwrap()[0] >> 31
}

#[test]
fn a_process_killed_waiting_for_a_permit_takes_none() {
    let _dog = watchdog("a_process_killed_waiting_for_a_permit_takes_none");
    let (seg, name) = posix_with_everything();
    let other = seg.try_clone().unwrap();
    let s = at::<Semaphore>(&seg, SEM);
    for _ in 0..PERMITS {
        s.acquire(&seg).unwrap();
    }
    let mut k = kin("sem-wait", &name);
    expect_line(&k, "waiting");
    common::eventually("the child to sleep", || semaphore_sleepers(&seg, SEM) >= 1);
    k.kill().unwrap();
    k.wait_for_exit(common::PATIENCE)
        .expect("the killed child is reaped");
    // A live sleeper is woken by the next release, and gets the permit.
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.acquire_for(&other, Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(20));
        s.release(&seg, 1).unwrap();
        assert_eq!(w.join().unwrap(), Ok(()));
    });
    s.release(&seg, 1).unwrap();
    assert_eq!(s.available(), 1);
    assert_eq!(s.try_acquire(&seg), Ok(()));
}

fn processes_never_exceed_the_permits(role: &str, parent: impl FnOnce(&Segment), sem: u64) {
    let (seg, name) = posix_with_everything();
    let kids: Vec<_> = (0..2).map(|_| kin(role, &name)).collect();
    parent(&seg);
    for k in kids {
        expect_line(&k, common::DONE_MARKER);
        finish(k);
    }
    let most = at::<AtomicU32>(&seg, MOST).load(Ordering::SeqCst);
    assert!((1..=PERMITS).contains(&most), "{most}");
    assert_eq!(at::<AtomicU32>(&seg, INSIDE).load(Ordering::SeqCst), 0);
    let available = if sem == SEM {
        at::<Semaphore>(&seg, SEM).available()
    } else {
        at::<LedgerSem>(&seg, LSEM).available()
    };
    assert_eq!(available, PERMITS);
}

#[test]
fn processes_never_exceed_the_permits_of_a_plain_semaphore() {
    let _dog = watchdog("processes_never_exceed_the_permits_of_a_plain_semaphore");
    processes_never_exceed_the_permits(
        "sem-count",
        |seg| use_permits::<0>(seg, SEM, SEM_ROUNDS),
        SEM,
    );
}

#[test]
fn processes_never_exceed_the_permits_of_a_ledger_semaphore() {
    let _dog = watchdog("processes_never_exceed_the_permits_of_a_ledger_semaphore");
    processes_never_exceed_the_permits(
        "lsem-count",
        |seg| use_permits::<128>(seg, LSEM, SEM_ROUNDS),
        LSEM,
    );
}

#[test]
fn a_sigkilled_holder_process_permits_come_back() {
    let _dog = watchdog("a_sigkilled_holder_process_permits_come_back");
    let (seg, name) = posix_with_everything();
    let s = at::<LedgerSem>(&seg, LSEM);
    let mut k = kin("lsem-hold", &name);
    expect_line(&k, "holding");
    assert_eq!(s.available(), 0);
    assert_eq!(s.try_acquire(&seg), Err(SemaphoreError::WouldBlock));
    k.kill().unwrap();
    assert_eq!(s.acquire_for(&seg, Duration::from_secs(10)), Ok(()));
    assert_eq!(s.try_acquire(&seg), Ok(()));
    assert_eq!(s.held_by(seg.owner_tag()), PERMITS);
    assert_eq!(s.available(), 0);
    s.release(&seg, PERMITS).unwrap();
    assert_eq!(s.available(), PERMITS);
}
