//! Matching answers to calls on connections loupe does not parse.

use loupe_common::ConnKey;

use super::{Answer, MAX_CONNECTIONS, MAX_WAITING_PER_CONNECTION, OpaqueCalls};
use crate::pipeline::linking::RequestKey;

const TGID: u32 = 100;
const LOOP: u32 = 1;
const DB: ConnKey = ConnKey { tgid: TGID, fd: 30 };

fn request(fd: u32) -> RequestKey {
    RequestKey {
        tgid: TGID,
        fd,
        conn_id: 1,
        request_id: 0,
    }
}

fn all_in_flight(_: &RequestKey) -> bool {
    true
}

/// The request a read on `DB` answered for thread `tid` (see [`OpaqueCalls::on_read`]).
fn read(calls: &mut OpaqueCalls, tid: u32) -> Option<Option<RequestKey>> {
    calls.on_read(DB, 7, tid, all_in_flight).map(|a| a.request)
}

fn read_conn(calls: &mut OpaqueCalls, conn_id: u64) -> Option<Option<RequestKey>> {
    calls
        .on_read(DB, conn_id, LOOP, all_in_flight)
        .map(|a| a.request)
}

fn answer(request: RequestKey, first_read: bool, by_order: bool) -> Option<Answer> {
    Some(Answer {
        request: Some(request),
        first_read,
        by_order,
    })
}

#[test]
fn a_pooled_connections_answer_goes_to_the_request_that_wrote_the_call() {
    let mut calls = OpaqueCalls::default();
    let (a, b) = (request(10), request(11));
    calls.on_write(DB, 7, LOOP, Some(a));
    let on_read = |calls: &mut OpaqueCalls| calls.on_read(DB, 7, LOOP, all_in_flight);
    assert_eq!(on_read(&mut calls), answer(a, true, false), "certain");
    // An answer in several reads: each read continues it.
    assert_eq!(on_read(&mut calls), answer(a, false, false));
    calls.on_write(DB, 7, LOOP, Some(b));
    assert_eq!(read(&mut calls, LOOP), Some(Some(b)));
}

#[test]
fn pipelined_answers_come_in_the_order_the_calls_were_written() {
    let mut calls = OpaqueCalls::default();
    let (a, b, c) = (request(10), request(11), request(12));
    calls.on_write(DB, 7, LOOP, Some(a));
    calls.on_write(DB, 7, LOOP, Some(b));
    let on_read = |calls: &mut OpaqueCalls| calls.on_read(DB, 7, LOOP, all_in_flight);
    assert_eq!(
        on_read(&mut calls),
        answer(a, true, true),
        "B waited behind A"
    );
    calls.on_write(DB, 7, LOOP, Some(c));
    assert_eq!(on_read(&mut calls), answer(b, true, true));
    assert_eq!(
        on_read(&mut calls),
        answer(c, true, false),
        "the last one waiting"
    );
}

#[test]
fn a_call_written_in_several_writes_waits_once() {
    let mut calls = OpaqueCalls::default();
    let (a, b) = (request(10), request(11));
    calls.on_write(DB, 7, LOOP, Some(a));
    calls.on_write(DB, 7, LOOP, Some(a));
    calls.on_write(DB, 7, LOOP, Some(b));
    assert_eq!(read(&mut calls, LOOP), Some(Some(a)));
    assert_eq!(read(&mut calls, LOOP), Some(Some(b)));
    // Two calls of one request, an answer between: each waits.
    calls.on_write(DB, 7, LOOP, Some(a));
    assert_eq!(read(&mut calls, LOOP), Some(Some(a)));
    calls.on_write(DB, 7, LOOP, Some(a));
    assert_eq!(read(&mut calls, LOOP), Some(Some(a)));
}

#[test]
fn a_read_on_another_thread_says_nothing_of_that_thread() {
    let mut calls = OpaqueCalls::default();
    let (a, b) = (request(10), request(11));
    calls.on_write(DB, 7, LOOP, Some(a));
    calls.on_write(DB, 7, LOOP, Some(b));
    // A client's own I/O thread reads every answer; the order still advances.
    assert_eq!(read(&mut calls, 2), None);
    assert_eq!(read(&mut calls, LOOP), Some(Some(b)));
}

#[test]
fn a_call_made_outside_any_request_wakes_a_handler_that_serves_none() {
    let mut calls = OpaqueCalls::default();
    calls.on_write(DB, 7, LOOP, None);
    assert_eq!(read(&mut calls, LOOP), Some(None));
}

#[test]
fn unknown_connections_and_reused_fds_say_nothing() {
    let mut calls = OpaqueCalls::default();
    assert_eq!(read(&mut calls, LOOP), None, "nothing written");
    calls.on_write(DB, 7, LOOP, Some(request(10)));
    assert_eq!(
        calls.on_read(DB, 8, LOOP, all_in_flight),
        None,
        "a later conn"
    );
    // The later connection's first write starts it afresh.
    calls.on_write(DB, 8, LOOP, Some(request(11)));
    assert!(calls.knows(&DB, 8) && !calls.knows(&DB, 7));
    assert_eq!(read_conn(&mut calls, 8), Some(Some(request(11))));
}

#[test]
fn calls_of_ended_requests_are_passed_over_while_a_later_one_waits() {
    let mut calls = OpaqueCalls::default();
    let (ended, b) = (request(10), request(11));
    // Written and never answered (nothing awaited), or answered with an earlier read.
    calls.on_write(DB, 7, LOOP, Some(ended));
    calls.on_write(DB, 7, LOOP, Some(b));
    let in_flight = |r: &RequestKey| *r != ended;
    assert_eq!(
        calls.on_read(DB, 7, LOOP, in_flight),
        answer(b, true, false)
    );
    // The last one waiting is taken even when ended: its handler may still be running.
    calls.on_write(DB, 7, LOOP, Some(ended));
    assert_eq!(
        calls.on_read(DB, 7, LOOP, in_flight),
        answer(ended, true, false)
    );
}

#[test]
fn bounded_per_connection_and_in_connections() {
    let mut calls = OpaqueCalls::default();
    for fd in 0..MAX_WAITING_PER_CONNECTION as u32 + 3 {
        calls.on_write(DB, 7, LOOP, Some(request(1_000 + fd)));
    }
    // The three oldest were forgotten.
    assert_eq!(read(&mut calls, LOOP), Some(Some(request(1_003))));

    let mut calls = OpaqueCalls::default();
    for fd in 0..MAX_CONNECTIONS as u32 {
        calls.on_write(ConnKey { tgid: TGID, fd }, 1, LOOP, None);
    }
    let beyond = ConnKey {
        tgid: TGID + 1,
        fd: 0,
    };
    calls.on_write(beyond, 1, LOOP, Some(request(10)));
    assert!(!calls.knows(&beyond, 1));
    assert_eq!(calls.len(), MAX_CONNECTIONS);
    // A known connection still takes its calls.
    let known = ConnKey { tgid: TGID, fd: 5 };
    calls.on_write(known, 1, LOOP, Some(request(10)));
    assert_eq!(
        calls
            .on_read(known, 1, LOOP, all_in_flight)
            .map(|a| a.request),
        Some(None),
        "its earlier call is answered first"
    );
}

#[test]
fn ended_requests_and_connections_are_forgotten() {
    let mut calls = OpaqueCalls::default();
    let (a, b) = (request(10), request(11));
    let other = ConnKey { tgid: TGID, fd: 31 };
    let other_process = ConnKey {
        tgid: TGID + 1,
        fd: 30,
    };
    calls.on_write(DB, 7, LOOP, Some(a));
    calls.on_write(other, 1, LOOP, Some(b));
    calls.on_write(other_process, 1, LOOP, Some(b));
    calls.expire(|r| *r == b);
    assert!(!calls.knows(&DB, 7), "only an ended request's call waited");
    assert!(calls.knows(&other, 1));
    calls.forget_connection(&other);
    assert!(!calls.knows(&other, 1));
    calls.forget_process(TGID + 1);
    assert_eq!(calls.len(), 0);
}
