//! Placement: which host serves a new session, or whether it must queue.
//!
//! A pure function of the request and a snapshot of the fleet, so it is tested without a
//! database or network. The problem:
//!
//! - the client measured its round-trip time to some regions;
//! - a region is acceptable if it was measured at or under the tenant's maximum RTT;
//! - among acceptable regions, the lowest RTT wins (ties: region name);
//! - within a region, the host with the most free slots that runs the game's runtime
//!   (ties: host id), so load spreads;
//! - a region without room spills to the next; if none has room, the request queues.
//!
//! The caller then claims the slot atomically in storage; if the claim loses a race it
//! asks again with a fresh snapshot.

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub id: String,
    pub region: String,
    pub capacity: u32,
    pub used: u32,
    pub runtimes: Vec<String>,
}

impl HostSnapshot {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }
}

/// What the player asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// Measured round-trip times, milliseconds, per region.
    pub rtt_ms: Vec<(String, u32)>,
    /// The tenant's limit.
    pub max_rtt_ms: u32,
    /// Runtime the game needs (e.g. `builtin`).
    pub runtime: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Host {
        host_id: String,
        region: String,
        rtt_ms: u32,
    },
    /// No acceptable region has room: wait in the tenant's queue.
    Queue,
    /// No acceptable region exists at all (none measured within the limit, or no host
    /// anywhere runs the game): queuing would never end.
    Unplaceable,
}

/// Chooses a host for `request` in `fleet`.
pub fn place(request: &PlacementRequest, fleet: &[HostSnapshot]) -> Placement {
    let mut regions: Vec<(&str, u32)> = request
        .rtt_ms
        .iter()
        .filter(|(_, rtt)| *rtt <= request.max_rtt_ms)
        .map(|(region, rtt)| (region.as_str(), *rtt))
        .collect();
    regions.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
    regions.dedup_by(|later, earlier| later.0 == earlier.0);

    let runs = |host: &&HostSnapshot| host.runtimes.iter().any(|r| r == &request.runtime);
    let mut any_capable = false;
    for (region, rtt_ms) in regions {
        let best = fleet
            .iter()
            .filter(|host| host.region == region)
            .filter(runs)
            .inspect(|_| any_capable = true)
            .filter(|host| host.free() > 0)
            .max_by(|a, b| a.free().cmp(&b.free()).then(b.id.cmp(&a.id)));
        if let Some(host) = best {
            debug_assert!(host.used < host.capacity);
            return Placement::Host { host_id: host.id.clone(), region: region.to_string(), rtt_ms };
        }
    }
    if any_capable { Placement::Queue } else { Placement::Unplaceable }
}

/// One member of a group that plays together (a lobby): what they measured and their own
/// tenant's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Measured round-trip times per region; empty when the member measured nothing (any
    /// region is acceptable to them).
    pub rtt_ms: Vec<(String, u32)>,
    pub max_rtt_ms: u32,
}

/// The regions a group may play in, each with its worst member's RTT: a region is
/// acceptable if every member who measured anything measured it within their own
/// tenant's limit. Feed the result to [`place`] (with no further limit) so that the
/// region whose slowest member is fastest wins. `None`: nobody measured anything (every
/// region is acceptable, as for a single player without measurements).
pub fn group_rtts(members: &[GroupMember]) -> Option<Vec<(String, u32)>> {
    let measured: Vec<&GroupMember> = members.iter().filter(|m| !m.rtt_ms.is_empty()).collect();
    let first = measured.first()?;
    let mut regions: Vec<(String, u32)> = Vec::with_capacity(first.rtt_ms.len());
    for (region, _) in &first.rtt_ms {
        if regions.iter().any(|(seen, _)| seen == region) {
            continue;
        }
        let worst = measured.iter().try_fold(0u32, |worst, member| {
            // A member's best measurement of the region counts (repeats are allowed).
            let rtt = member.rtt_ms.iter().filter(|(r, _)| r == region).map(|(_, t)| *t).min()?;
            (rtt <= member.max_rtt_ms).then_some(worst.max(rtt))
        });
        if let Some(worst) = worst {
            regions.push((region.clone(), worst));
        }
    }
    Some(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, region: &str, capacity: u32, used: u32) -> HostSnapshot {
        HostSnapshot {
            id: id.into(),
            region: region.into(),
            capacity,
            used,
            runtimes: vec!["builtin".into()],
        }
    }

    /// A seeded xorshift: `next(n)` is in `0..n`.
    fn seeded(mut state: u64) -> impl FnMut(u32) -> u32 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as u32
        }
    }

    fn request(rtts: &[(&str, u32)]) -> PlacementRequest {
        PlacementRequest {
            rtt_ms: rtts.iter().map(|(r, t)| (r.to_string(), *t)).collect(),
            max_rtt_ms: 80,
            runtime: "builtin".into(),
        }
    }

    #[test]
    fn nearest_region_with_room_wins_then_spills_then_queues() {
        let mut fleet = vec![host("eu-1", "eu", 1, 0), host("us-1", "us", 1, 0), host("ap-1", "ap", 5, 0)];
        let ask = request(&[("us", 60), ("eu", 12), ("ap", 200)]);
        assert_eq!(
            place(&ask, &fleet),
            Placement::Host { host_id: "eu-1".into(), region: "eu".into(), rtt_ms: 12 }
        );
        fleet[0].used = 1;
        assert_eq!(
            place(&ask, &fleet),
            Placement::Host { host_id: "us-1".into(), region: "us".into(), rtt_ms: 60 }
        );
        fleet[1].used = 1;
        // ap has room but is over the tenant's 80 ms limit.
        assert_eq!(place(&ask, &fleet), Placement::Queue);
    }

    #[test]
    fn load_spreads_within_a_region_and_runtimes_must_match() {
        let mut fleet = vec![host("a", "eu", 4, 3), host("b", "eu", 4, 1), host("c", "eu", 4, 1)];
        let ask = request(&[("eu", 10)]);
        assert!(
            matches!(place(&ask, &fleet), Placement::Host { host_id, .. } if host_id == "b"),
            "most free, then lowest id"
        );
        for host in &mut fleet {
            host.runtimes = vec!["libretro".into()];
        }
        assert_eq!(place(&ask, &fleet), Placement::Unplaceable);
        assert_eq!(place(&request(&[("mars", 10)]), &fleet), Placement::Unplaceable);
    }

    /// Seeded random fleets and requests: the contract holds every time.
    #[test]
    fn property_never_over_capacity_and_lowest_rtt_with_room() {
        let mut next = seeded(0x853c_49e6_748f_ea9b);
        let regions = ["a", "b", "c", "d"];
        for _ in 0..5_000 {
            let fleet: Vec<HostSnapshot> = (0..next(8))
                .map(|i| {
                    let capacity = next(4);
                    let mut h =
                        host(&format!("h{i}"), regions[next(4) as usize], capacity, next(capacity + 1));
                    if next(5) == 0 {
                        h.runtimes = vec!["native".into()];
                    }
                    h
                })
                .collect();
            let mut rtts: Vec<(&str, u32)> = Vec::new();
            for region in regions {
                if next(3) != 0 {
                    rtts.push((region, next(150)));
                }
            }
            let ask = request(&rtts);
            let ok = |h: &HostSnapshot| h.used < h.capacity && h.runtimes.contains(&"builtin".to_string());
            let rtt_of = |region: &str| rtts.iter().find(|(r, _)| *r == region).map(|(_, t)| *t);
            let best_possible = fleet
                .iter()
                .filter(|h| ok(h))
                .filter_map(|h| rtt_of(&h.region))
                .filter(|t| *t <= ask.max_rtt_ms)
                .min();
            match place(&ask, &fleet) {
                Placement::Host { host_id, region, rtt_ms } => {
                    let chosen = fleet.iter().find(|h| h.id == host_id).expect("a real host");
                    assert!(ok(chosen), "never over capacity, runtime matches");
                    assert_eq!(chosen.region, region);
                    assert_eq!(Some(rtt_ms), best_possible, "lowest RTT with room wins");
                }
                Placement::Queue | Placement::Unplaceable => {
                    assert_eq!(best_possible, None, "queued though room existed")
                }
            }
        }
    }

    fn member(rtts: &[(&str, u32)], max_rtt_ms: u32) -> GroupMember {
        GroupMember { rtt_ms: rtts.iter().map(|(r, t)| (r.to_string(), *t)).collect(), max_rtt_ms }
    }

    #[test]
    fn a_group_plays_where_its_slowest_member_is_fastest() {
        let fleet = vec![host("eu-1", "eu", 4, 0), host("us-1", "us", 4, 0)];
        // One near eu, one near us; the us member's tenant allows 100 ms, the other 80.
        let group = [member(&[("eu", 10), ("us", 90)], 80), member(&[("eu", 95), ("us", 15)], 100)];
        let regions = group_rtts(&group).unwrap();
        assert_eq!(regions, vec![("eu".to_string(), 95)], "us is over the first member's limit");
        let ask = PlacementRequest { rtt_ms: regions, max_rtt_ms: u32::MAX, runtime: "builtin".into() };
        assert!(matches!(place(&ask, &fleet), Placement::Host { region, .. } if region == "eu"));
        // Members who measured nothing constrain nothing; if nobody did, any region goes.
        assert_eq!(
            group_rtts(&[member(&[], 80), member(&[("us", 20)], 80)]).unwrap(),
            vec![("us".into(), 20)]
        );
        assert_eq!(group_rtts(&[member(&[], 80)]), None);
        assert_eq!(group_rtts(&[member(&[("eu", 10)], 80), member(&[("us", 10)], 80)]).unwrap(), vec![]);
    }

    /// Seeded random groups: every region offered is acceptable to every member at the RTT
    /// given, and no acceptable region is left out.
    #[test]
    fn property_group_regions_suit_every_member() {
        let mut next = seeded(0x2545_f491_4f6c_dd1d);
        let regions = ["a", "b", "c", "d"];
        for _ in 0..5_000 {
            let mut group = Vec::new();
            for _ in 0..1 + next(8) {
                let mut rtts = Vec::new();
                for region in regions {
                    if next(4) != 0 {
                        rtts.push((region, next(200)));
                    }
                }
                group.push(member(&rtts, 40 + next(100)));
            }
            let acceptable = |region: &str| {
                group.iter().filter(|m| !m.rtt_ms.is_empty()).try_fold(0, |worst, m| {
                    let rtt = m.rtt_ms.iter().find(|(r, _)| r == region)?.1;
                    (rtt <= m.max_rtt_ms).then_some(u32::max(worst, rtt))
                })
            };
            match group_rtts(&group) {
                None => assert!(group.iter().all(|m| m.rtt_ms.is_empty())),
                Some(offered) => {
                    for region in regions {
                        let found = offered.iter().find(|(r, _)| r == region).map(|(_, t)| *t);
                        assert_eq!(found, acceptable(region), "region {region} for {group:?}");
                    }
                }
            }
        }
    }
}
