//! Placement strategies side by side: Levee's weighted rendezvous hashing with bounded
//! loads (and without the bound), the `consistent_hash` crate's virtual-node ring, and jump
//! consistent hashing (Lamping & Veach; a few lines, written here).
//!
//! Before the timings it prints, for 3, 10, 100 and 1,000 members and 4,096 shards, the
//! max/mean load and the fraction of shards moved when one member joins or leaves, next to
//! the ideal (1/(N+1) on a join, 1/N on a leave).
//!
//! `cargo bench -p levee-bench --bench placement`

use std::collections::BTreeMap;
use std::hint::black_box;

use consistent_hash::{DefaultHash, Node, StaticHashRing};
use criterion::{Criterion, criterion_group, criterion_main};
use levee_sharding::{Member, Membership, Placement, PlacementConfig};

const SHARDS: u32 = 4096;
const SIZES: [usize; 4] = [3, 10, 100, 1000];
/// Virtual nodes per member on the ring (a common default range is 100–200).
const VNODES: usize = 160;

/// One strategy: shard → owner name, for a member list.
trait Strategy {
    fn name(&self) -> &'static str;
    fn owners(&self, members: &[String]) -> Vec<String>;
}

struct Hrw(Option<f64>);

impl Strategy for Hrw {
    fn name(&self) -> &'static str {
        if self.0.is_some() {
            "levee HRW, bounded ε=0.25"
        } else {
            "levee HRW, unbounded"
        }
    }
    fn owners(&self, members: &[String]) -> Vec<String> {
        let p = hrw(members, self.0);
        (0..SHARDS)
            .map(|s| p.owner(s).map(|m| m.name.clone()).unwrap_or_default())
            .collect()
    }
}

fn hrw(members: &[String], epsilon: Option<f64>) -> Placement {
    let membership = Membership::new(
        1,
        members
            .iter()
            .map(|n| Member::new(n.clone(), "eu"))
            .collect(),
    )
    .expect("unique names");
    Placement::compute(
        &membership,
        &PlacementConfig {
            shards: SHARDS,
            epsilon,
            ..PlacementConfig::default()
        },
    )
}

struct Ring;

impl Strategy for Ring {
    fn name(&self) -> &'static str {
        "consistent_hash ring, 160 vnodes"
    }
    fn owners(&self, members: &[String]) -> Vec<String> {
        let ring = ring(members);
        (0..SHARDS)
            .map(|s| {
                ring.calc_candidates(&s)
                    .next()
                    .map(|n| n.key.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn ring(members: &[String]) -> StaticHashRing<'_, String, (), DefaultHash> {
    StaticHashRing::new(
        DefaultHash,
        members
            .iter()
            .map(|n| Node::new(n.clone()).quantity(VNODES)),
    )
}

struct Jump;

impl Strategy for Jump {
    fn name(&self) -> &'static str {
        "jump hash (members as numbered buckets)"
    }
    fn owners(&self, members: &[String]) -> Vec<String> {
        (0..SHARDS)
            .map(|s| members[jump(key(s), members.len() as i64) as usize].clone())
            .collect()
    }
}

/// A well-mixed 64-bit key for a shard.
fn key(shard: u32) -> u64 {
    let mut x = u64::from(shard).wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Jump consistent hash (Lamping & Veach 2014): the bucket in 0..buckets for `key`.
fn jump(mut key: u64, buckets: i64) -> i64 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn moved(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

fn max_over_mean(owners: &[String], n: usize) -> f64 {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for o in owners {
        *load.entry(o).or_default() += 1;
    }
    let max = load.values().copied().max().unwrap_or(0) as f64;
    max / (owners.len() as f64 / n as f64)
}

fn quality_table() {
    let strategies: [&dyn Strategy; 4] = [&Hrw(Some(0.25)), &Hrw(None), &Ring, &Jump];
    println!(
        "\n| strategy | members | max/mean load | moved on join (ideal) | moved on leave (ideal) |"
    );
    println!("|---|---|---|---|---|");
    for n in SIZES {
        let base = names(n);
        let mut joined = base.clone();
        joined.push("joiner".into());
        // Jump hash can only remove the last bucket; the others lose a middle member.
        for s in strategies {
            let before = s.owners(&base);
            let after_join = s.owners(&joined);
            let left: Vec<String> = if s.name().starts_with("jump") {
                base[..n - 1].to_vec()
            } else {
                base.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != n / 2)
                    .map(|(_, m)| m.clone())
                    .collect()
            };
            let after_leave = s.owners(&left);
            println!(
                "| {} | {n} | {:.2} | {:.3} ({:.3}) | {:.3} ({:.3}) |",
                s.name(),
                max_over_mean(&before, n),
                moved(&before, &after_join),
                1.0 / (n + 1) as f64,
                moved(&before, &after_leave),
                1.0 / n as f64,
            );
        }
    }
    println!();
}

fn lookups(c: &mut Criterion) {
    quality_table();
    let mut g = c.benchmark_group("placement");
    for n in SIZES {
        let members = names(n);
        let table = hrw(&members, Some(0.25));
        g.bench_function(format!("lookup/levee-hrw-table/{n}"), |b| {
            let mut s = 0u32;
            b.iter(|| {
                s = (s + 1) % SHARDS;
                black_box(table.owner(black_box(s)).is_ok())
            })
        });
        let r = ring(&members);
        g.bench_function(format!("lookup/consistent_hash-ring/{n}"), |b| {
            let mut s = 0u32;
            b.iter(|| {
                s = (s + 1) % SHARDS;
                black_box(r.calc_candidates(&black_box(s)).next().is_some())
            })
        });
        g.bench_function(format!("lookup/jump/{n}"), |b| {
            let mut s = 0u32;
            b.iter(|| {
                s = (s + 1) % SHARDS;
                black_box(jump(key(black_box(s)), n as i64))
            })
        });
        g.bench_function(format!("build/levee-hrw-bounded/{n}"), |b| {
            b.iter(|| black_box(hrw(&members, Some(0.25)).epoch()))
        });
        g.bench_function(format!("build/consistent_hash-ring/{n}"), |b| {
            b.iter(|| black_box(ring(&members).len()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = lookups
}
criterion_main!(benches);
