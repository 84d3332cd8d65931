//! The address pool as a pure state machine: which address a client without a reservation
//! gets, given what is leased, what is reserved and the time. No IO and no clock here, so
//! every path (exhaustion, reuse after release and expiry, declines, reservations inside
//! the pool's range) is a table test; where the leases are kept is the server's business.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use kiln_types::MacAddress;

/// An offered address is held this long (seconds) for the client's REQUEST.
pub const OFFER_HOLD_SECONDS: u64 = 60;

/// What a client asked of the pool, from its DHCP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRequest {
    /// DHCPDISCOVER: offer an address, holding it briefly.
    Discover,
    /// DHCPREQUEST, with the address it names (option 50, or `ciaddr` when renewing).
    Request { requested: Ipv4Addr },
    /// DHCPRELEASE: the client gives its address back.
    Release,
    /// DHCPDECLINE: the client found its address in use by someone else.
    Decline,
    /// DHCPINFORM and anything else: the client's lease, if it has one, unchanged.
    Other,
}

/// A lease as the pool keeps it and the lease log stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    /// Unix seconds; an offer's hold or a lease's end. `0` in a [`LeaseChange`] ends it.
    pub expires: u64,
}

/// What the pool changed that outlives a restart: the caller persists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseChange {
    pub mac: MacAddress,
    pub lease: Lease,
}

/// The pool's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolAnswer {
    /// The address to offer or acknowledge; `None` means no address (NAK or silence).
    pub address: Option<Ipv4Addr>,
    /// A change to persist (offers are not persisted: they are held for a minute only).
    pub change: Option<LeaseChange>,
}

/// How long leases last and which addresses the inventory reserves for known machines.
pub struct PoolContext<'a> {
    pub now: u64,
    pub lease_seconds: u32,
    /// Whether an address is reserved for a node in the inventory: the pool never hands it
    /// to anyone else, even when the pool's range covers it.
    pub reserved: &'a dyn Fn(Ipv4Addr) -> bool,
}

/// An inclusive range of addresses and who holds which.
#[derive(Debug, Clone)]
pub struct Pool {
    first: u32,
    last: u32,
    /// Address and expiry by client.
    by_mac: HashMap<MacAddress, Lease>,
    /// Addresses held by a lease or an offer, and declined addresses (held by nobody we
    /// know, so never offered again until a restart forgets them).
    taken: HashSet<Ipv4Addr>,
    /// Where the search for a free address resumes, so handing out N addresses costs O(N)
    /// in all rather than O(N) each.
    cursor: u32,
}

impl Pool {
    /// An empty pool over `first..=last` (the configuration checks `first <= last`).
    pub fn new(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        let (first, last) = (u32::from(first), u32::from(last));
        Pool { first, last, by_mac: HashMap::new(), taken: HashSet::new(), cursor: first }
    }

    /// Takes back leases restored from the lease log.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = (MacAddress, Lease)>) {
        for (mac, lease) in leases {
            self.taken.insert(lease.address);
            self.by_mac.insert(mac, lease);
        }
    }

    /// The client's current lease or offer, if any.
    pub fn lease_of(&self, mac: &MacAddress) -> Option<Lease> {
        self.by_mac.get(mac).copied()
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(address))
    }

    /// Decides one request: the address to give and what to persist.
    pub fn decide(&mut self, mac: MacAddress, request: PoolRequest, context: &PoolContext<'_>) -> PoolAnswer {
        if let Some(lease) = self.by_mac.get(&mac).copied() {
            return self.decide_for_holder(mac, lease, request, context);
        }
        match request {
            PoolRequest::Discover => self.offer(mac, context),
            PoolRequest::Request { requested } => self.adopt(mac, requested, context),
            PoolRequest::Release | PoolRequest::Decline | PoolRequest::Other => PoolAnswer::default(),
        }
    }

    /// A client that holds a lease or an offer already.
    fn decide_for_holder(&mut self, mac: MacAddress, lease: Lease, request: PoolRequest, context: &PoolContext<'_>) -> PoolAnswer {
        let ended = LeaseChange { mac, lease: Lease { address: lease.address, expires: 0 } };
        if (context.reserved)(lease.address) {
            // The address became a node's reservation since it was handed out: the lease
            // ends at the client's next message, and a DISCOVER gets another address.
            self.by_mac.remove(&mac);
            self.taken.remove(&lease.address);
            return match request {
                PoolRequest::Discover => PoolAnswer { change: Some(ended), ..self.offer(mac, context) },
                _ => PoolAnswer { address: None, change: Some(ended) },
            };
        }
        match request {
            PoolRequest::Release => {
                self.by_mac.remove(&mac);
                self.taken.remove(&lease.address);
                PoolAnswer { address: None, change: Some(ended) }
            }
            PoolRequest::Decline => {
                // Someone else answers on that address: it stays out of the pool.
                self.by_mac.remove(&mac);
                PoolAnswer { address: None, change: Some(ended) }
            }
            PoolRequest::Request { requested } if requested != lease.address && !requested.is_unspecified() => {
                // The client asks for another address than the one it holds (a stale lease,
                // or another server's offer): its own address is answered unchanged, which
                // the protocol turns into a NAK, and nothing is renewed.
                PoolAnswer { address: Some(lease.address), change: None }
            }
            PoolRequest::Request { .. } => {
                let renewed = Lease { address: lease.address, expires: context.now + u64::from(context.lease_seconds) };
                self.by_mac.insert(mac, renewed);
                PoolAnswer { address: Some(lease.address), change: Some(LeaseChange { mac, lease: renewed }) }
            }
            PoolRequest::Discover | PoolRequest::Other => PoolAnswer { address: Some(lease.address), change: None },
        }
    }

    /// A REQUEST for an address this pool never offered the client (a lease from before the
    /// log, or from another server): honoured when the address is in the pool and free.
    fn adopt(&mut self, mac: MacAddress, requested: Ipv4Addr, context: &PoolContext<'_>) -> PoolAnswer {
        if !self.contains(requested) || self.taken.contains(&requested) || (context.reserved)(requested) {
            return PoolAnswer::default();
        }
        let lease = Lease { address: requested, expires: context.now + u64::from(context.lease_seconds) };
        self.taken.insert(requested);
        self.by_mac.insert(mac, lease);
        PoolAnswer { address: Some(requested), change: Some(LeaseChange { mac, lease }) }
    }

    /// A DISCOVER: the next free address, held for [`OFFER_HOLD_SECONDS`]; when none is
    /// free, expired leases and unanswered offers are taken back first.
    fn offer(&mut self, mac: MacAddress, context: &PoolContext<'_>) -> PoolAnswer {
        let free = match self.find_free(context) {
            Some(free) => free,
            None => {
                self.take_back_expired(context.now);
                match self.find_free(context) {
                    Some(free) => free,
                    None => return PoolAnswer::default(),
                }
            }
        };
        self.cursor = u32::from(free).saturating_add(1);
        self.taken.insert(free);
        self.by_mac.insert(mac, Lease { address: free, expires: context.now + OFFER_HOLD_SECONDS });
        PoolAnswer { address: Some(free), change: None }
    }

    fn find_free(&self, context: &PoolContext<'_>) -> Option<Ipv4Addr> {
        let start = self.cursor.clamp(self.first, self.last);
        (start..=self.last)
            .chain(self.first..start)
            .map(Ipv4Addr::from)
            .find(|address| !self.taken.contains(address) && !(context.reserved)(*address))
    }

    fn take_back_expired(&mut self, now: u64) {
        let expired: Vec<(MacAddress, Ipv4Addr)> =
            self.by_mac.iter().filter(|(_, lease)| lease.expires <= now).map(|(mac, lease)| (*mac, lease.address)).collect();
        for (mac, address) in expired {
            self.by_mac.remove(&mac);
            self.taken.remove(&address);
        }
    }
}

#[cfg(test)]
mod tests;
