//! Two real processes: a stream from a child producer to the parent, and a role
//! held by a child that is SIGKILLed and then taken over.

use std::io::{Read, Write};
use std::process::Stdio;

use crate::common::{LineChild, PATIENCE, child_main_command};
use shmkit::queue::SpscQueue;
use shmkit::{Error, Segment, SegmentOptions};

pub const ROLE: &str = "SHMKIT_CHILD_ROLE";
const TARGET: &str = "SHMKIT_CHILD_TARGET";
const COUNT: &str = "SHMKIT_CHILD_COUNT";
const PREFIX: &str = "SHMKIT:";
const KEY: u64 = 0x9e37_79b9_7f4a_7c15;

type Msg = [u64; 2];

fn msg(seq: u64) -> Msg {
    [seq, seq.wrapping_mul(KEY) ^ 0x5555]
}

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{what}").unwrap();
    out.flush().unwrap();
}

pub fn child(role: &str) {
    let name = std::env::var(TARGET).expect("SHMKIT_CHILD_TARGET");
    let seg = SegmentOptions::posix(&name).open().expect("child: open");
    let q = seg.find::<SpscQueue<Msg>>("q").expect("child: find");
    match role {
        "produce" => {
            let n: u64 = std::env::var(COUNT).unwrap().parse().unwrap();
            let mut tx = q.producer().expect("child: producer");
            let mut seq = 0;
            while seq < n {
                if seq % 3 == 0 {
                    let batch: Vec<Msg> = (seq..(seq + 4).min(n)).map(msg).collect();
                    let mut done = 0;
                    while done < batch.len() {
                        done += tx.push_slice(&batch[done..]).unwrap();
                    }
                    seq += batch.len() as u64;
                } else {
                    tx.push_blocking(msg(seq)).unwrap();
                    seq += 1;
                }
            }
            say("done");
        }
        "hold" => {
            let mut tx = q.producer().expect("child: producer");
            for seq in 0..3 {
                tx.try_push(msg(seq)).unwrap();
            }
            say(&format!("ready {}", seg.slot()));
            // Until killed (or until the parent is gone: our stdin closes with it).
            let mut sink = Vec::new();
            let _ = std::io::stdin().lock().read_to_end(&mut sink);
        }
        other => panic!("unknown child role {other:?}"),
    }
}

fn segment() -> (String, Segment) {
    let name = shmkit::unique_name("queue-spsc-").unwrap();
    let seg = SegmentOptions::posix(&name)
        .max_size(1 << 22)
        .create()
        .unwrap();
    (name, seg)
}

fn spawn(role: &str, name: &str, count: u64) -> LineChild {
    let mut cmd = child_main_command();
    cmd.env(ROLE, role)
        .env(TARGET, name)
        .env(COUNT, count.to_string());
    LineChild::spawn(cmd, Stdio::piped())
}

#[test]
fn a_child_process_streams_messages_to_the_parent_in_order() {
    let (name, seg) = segment();
    let q = seg.find_or_create::<SpscQueue<Msg>>("q", 64).unwrap();
    let mut rx = q.consumer().unwrap();
    let n: u64 = if cfg!(debug_assertions) {
        200_000
    } else {
        2_000_000
    };
    let mut child = spawn("produce", &name, n);
    let mut buf = [[0u64; 2]; 16];
    let mut next = 0;
    while next < n {
        let first = rx
            .pop_blocking_for(PATIENCE)
            .expect("a message within the patience");
        assert_eq!(first, msg(next), "message {next}");
        next += 1;
        let k = rx.pop_into(&mut buf).unwrap();
        for m in &buf[..k] {
            assert_eq!(*m, msg(next), "message {next}");
            next += 1;
        }
    }
    child
        .next_after(&format!("{PREFIX}done"), PATIENCE)
        .expect("child done");
    assert!(child.wait_for_exit(PATIENCE).is_some_and(|s| s.success()));
    assert_eq!(rx.pop().unwrap(), None);
}

#[test]
fn a_role_held_by_a_live_process_is_refused_and_taken_over_after_sigkill() {
    let (name, seg) = segment();
    let q = seg.find_or_create::<SpscQueue<Msg>>("q", 8).unwrap();
    let mut child = spawn("hold", &name, 0);
    let slot: u32 = child
        .next_after(&format!("{PREFIX}ready "), PATIENCE)
        .expect("child ready")
        .trim()
        .parse()
        .unwrap();
    match q.producer() {
        Err(Error::RoleTaken {
            role: "producer",
            slot: s,
            ..
        }) => assert_eq!(s, slot),
        other => panic!("{other:?}"),
    }
    child.kill().unwrap();
    assert!(child.wait_for_exit(PATIENCE).is_some());
    let mut tx = q.producer().expect("the dead holder's role is taken over");
    assert_eq!(tx.position(), 3);
    tx.try_push(msg(3)).unwrap();
    let mut rx = q.consumer().unwrap();
    for seq in 0..4 {
        assert_eq!(rx.pop().unwrap(), Some(msg(seq)));
    }
    assert_eq!(rx.pop().unwrap(), None);
}
