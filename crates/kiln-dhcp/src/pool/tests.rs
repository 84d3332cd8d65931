//! Table tests of the pool: each case plays a sequence of requests against a small pool
//! and states the address each one gets and whether a lease change is persisted.

use std::net::Ipv4Addr;

use super::{Lease, LeaseChange, OFFER_HOLD_SECONDS, Pool, PoolContext, PoolRequest};
use Persisted::{Ended, Leased, Nothing};
use PoolRequest::{Decline, Discover, Other, Release};
use kiln_types::MacAddress;

const LEASE_SECONDS: u32 = 3600;

fn mac(last: u8) -> MacAddress {
    format!("52:54:00:00:00:{last:02x}").parse().expect("a test MAC parses")
}

fn address(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

/// What a step expects the change to the lease log to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Persisted {
    Nothing,
    /// A lease ending at `now + LEASE_SECONDS`.
    Leased,
    /// The lease of this address ended (expiry 0).
    Ended(u8),
}

/// One request of a case: who asks, what, when, and what it must get.
struct Step {
    client: u8,
    request: PoolRequest,
    now: u64,
    expect: Option<u8>,
    persisted: Persisted,
}

fn step(client: u8, request: PoolRequest, now: u64, expect: Option<u8>, persisted: Persisted) -> Step {
    Step { client, request, now, expect, persisted }
}

fn request(last: u8) -> PoolRequest {
    PoolRequest::Request { requested: address(last) }
}

/// Plays `steps` against a pool over `.first..=.last` with `reserved` addresses.
fn play(name: &str, first: u8, last: u8, reserved: &[u8], steps: &[Step]) {
    let reserved: Vec<Ipv4Addr> = reserved.iter().map(|last| address(*last)).collect();
    let is_reserved = |candidate: Ipv4Addr| reserved.contains(&candidate);
    let mut pool = Pool::new(address(first), address(last));
    for (index, step) in steps.iter().enumerate() {
        let context = PoolContext { now: step.now, lease_seconds: LEASE_SECONDS, reserved: &is_reserved };
        let answer = pool.decide(mac(step.client), step.request, &context);
        assert_eq!(answer.address, step.expect.map(address), "{name}, step {index}: address");
        let lease = match step.persisted {
            Nothing => None,
            Leased => step.expect.map(|last| Lease { address: address(last), expires: step.now + u64::from(LEASE_SECONDS) }),
            Ended(last) => Some(Lease { address: address(last), expires: 0 }),
        };
        let expected_change = lease.map(|lease| LeaseChange { mac: mac(step.client), lease });
        assert_eq!(answer.change, expected_change, "{name}, step {index}: persisted change");
    }
}

#[test]
fn discover_then_request_leases_the_offered_address() {
    play(
        "offer and lease",
        100,
        102,
        &[],
        &[
            step(1, Discover, 0, Some(100), Nothing),
            step(1, request(100), 1, Some(100), Leased),
            // A second DISCOVER (iPXE after the firmware) gets the same address.
            step(1, Discover, 2, Some(100), Nothing),
            step(2, Discover, 3, Some(101), Nothing),
            // Renewing with ciaddr only: the request names the held address.
            step(1, request(100), 1800, Some(100), Leased),
        ],
    );
}

#[test]
fn exhaustion_answers_nothing_until_an_offer_or_lease_expires() {
    play(
        "exhaustion",
        100,
        101,
        &[],
        &[
            step(1, Discover, 0, Some(100), Nothing),
            step(1, request(100), 0, Some(100), Leased),
            step(2, Discover, 0, Some(101), Nothing),
            // Full: the third client gets nothing while the offer is held.
            step(3, Discover, 1, None, Nothing),
            // Client 2 never asked for its offer; once the hold ends its address goes to 3.
            step(3, Discover, OFFER_HOLD_SECONDS, Some(101), Nothing),
            // Client 1's lease is still good until it ends.
            step(4, Discover, OFFER_HOLD_SECONDS + 1, None, Nothing),
            // At its end both addresses are free again; the search resumes after the last
            // address handed out.
            step(4, Discover, u64::from(LEASE_SECONDS), Some(101), Nothing),
            step(5, Discover, u64::from(LEASE_SECONDS), Some(100), Nothing),
        ],
    );
}

#[test]
fn a_released_address_is_offered_again() {
    play(
        "release",
        100,
        100,
        &[],
        &[
            step(1, Discover, 0, Some(100), Nothing),
            step(1, request(100), 0, Some(100), Leased),
            step(2, Discover, 1, None, Nothing),
            step(1, Release, 2, None, Ended(100)),
            step(2, Discover, 3, Some(100), Nothing),
            // A release from a client that holds nothing changes nothing.
            step(3, Release, 4, None, Nothing),
        ],
    );
}

#[test]
fn a_declined_address_is_never_offered_again() {
    play(
        "decline",
        100,
        101,
        &[],
        &[
            step(1, Discover, 0, Some(100), Nothing),
            step(1, Decline, 1, None, Ended(100)),
            // 100 answers for someone else: it stays out, even after every hold ends.
            step(1, Discover, 2, Some(101), Nothing),
            step(2, Discover, 10_000, Some(101), Nothing),
            step(3, Discover, 10_001, None, Nothing),
        ],
    );
}

#[test]
fn reservations_inside_the_range_are_never_offered() {
    play(
        "reserved inside the range",
        100,
        103,
        &[100, 102],
        &[
            step(1, Discover, 0, Some(101), Nothing),
            step(2, Discover, 0, Some(103), Nothing),
            step(3, Discover, 0, None, Nothing),
            // Nor adopted from a client that asks for one without an offer.
            step(4, request(102), 0, None, Nothing),
        ],
    );
}

#[test]
fn a_request_without_an_offer_is_adopted_only_when_free_and_in_range() {
    play(
        "adoption",
        100,
        101,
        &[],
        &[
            // A lease from before a restart that the log does not have.
            step(1, request(101), 0, Some(101), Leased),
            // Taken now: another client cannot adopt it.
            step(2, request(101), 1, None, Nothing),
            // Outside the range: not ours to give.
            step(3, request(50), 1, None, Nothing),
            step(2, Discover, 2, Some(100), Nothing),
        ],
    );
}

#[test]
fn a_request_for_another_address_renews_nothing() {
    play(
        "mismatch",
        100,
        101,
        &[],
        &[
            step(1, Discover, 0, Some(100), Nothing),
            // The client asks for an address it was not offered: its own is answered (the
            // protocol NAKs the mismatch) and the offer is not turned into a lease.
            step(1, request(101), 1, Some(100), Nothing),
            step(2, Discover, OFFER_HOLD_SECONDS, Some(101), Nothing),
            step(3, Discover, OFFER_HOLD_SECONDS, Some(100), Nothing),
        ],
    );
}

#[test]
fn inform_and_unknown_messages_change_nothing() {
    play(
        "inform",
        100,
        100,
        &[],
        &[step(1, Other, 0, None, Nothing), step(1, Discover, 0, Some(100), Nothing), step(1, Other, 1, Some(100), Nothing)],
    );
}

#[test]
fn restored_leases_hold_their_addresses() {
    let mut pool = Pool::new(address(100), address(101));
    pool.restore([(mac(1), Lease { address: address(100), expires: 5_000 })]);
    let nothing_reserved = |_: Ipv4Addr| false;
    let context = PoolContext { now: 10, lease_seconds: LEASE_SECONDS, reserved: &nothing_reserved };
    assert_eq!(pool.decide(mac(2), Discover, &context).address, Some(address(101)));
    assert_eq!(pool.decide(mac(1), Discover, &context).address, Some(address(100)));
    assert_eq!(pool.lease_of(&mac(1)), Some(Lease { address: address(100), expires: 5_000 }));
}

#[test]
fn a_lease_whose_address_becomes_a_reservation_ends_and_the_client_moves() {
    let mut pool = Pool::new(address(100), address(101));
    let nothing_reserved = |_: Ipv4Addr| false;
    let before = PoolContext { now: 0, lease_seconds: LEASE_SECONDS, reserved: &nothing_reserved };
    assert_eq!(pool.decide(mac(1), Discover, &before).address, Some(address(100)));
    assert_eq!(pool.decide(mac(1), request(100), &before).address, Some(address(100)));
    // A node is given 100 in the inventory.
    let reserved = |candidate: Ipv4Addr| candidate == address(100);
    let after = PoolContext { now: 10, lease_seconds: LEASE_SECONDS, reserved: &reserved };
    let renewal = pool.decide(mac(1), request(100), &after);
    let ended = Some(LeaseChange { mac: mac(1), lease: Lease { address: address(100), expires: 0 } });
    assert_eq!((renewal.address, renewal.change), (None, ended), "the renewal is refused and the lease ends");
    let moved = pool.decide(mac(1), Discover, &after);
    assert_eq!(moved.address, Some(address(101)), "the client gets another address");
    // A holder that DISCOVERs again while its address turns reserved is moved at once.
    let mut pool = Pool::new(address(100), address(101));
    assert_eq!(pool.decide(mac(2), Discover, &before).address, Some(address(100)));
    let moved = pool.decide(mac(2), Discover, &after);
    let ended = Some(LeaseChange { mac: mac(2), lease: Lease { address: address(100), expires: 0 } });
    assert_eq!((moved.address, moved.change), (Some(address(101)), ended));
}
