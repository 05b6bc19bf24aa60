//! Malformed tables never panic the planner, and whatever it accepts is sound.
//!
//! A fixed-seed generator builds thousands of tables of random and nearly-valid entries over a
//! simulated memory (text with real instructions, a replacement section, unmapped space around
//! them). Each table is planned: the planner must return `Ok` or a `TableError` naming an entry
//! that exists, never panic. For every accepted plan the test applies it through an in-memory
//! writer and checks what a wrong patch would break: every site keeps its length, holds whole
//! instructions that end exactly at its end, lies inside the text, and reverting restores the
//! original memory byte for byte.

use std::cell::RefCell;
use std::ops::Range;

use alt_runtime::driver::Prepared;
use alt_runtime::memory::{Memory, MemoryError};
use alt_runtime::plan::{plan_alternatives, Layout, TableEntry};
use alt_runtime::rendezvous::Alone;
use alt_runtime::table::{AltEntry, AltFlags};
use alt_runtime::writer::{Chunks, WriteError, WriteStats, Writer};
use alt_runtime::x86_64::insn::ends_exactly;
use alt_runtime::{CapabilitySet, Errata, Features};

const TEXT: u64 = 0x40_0000;
const TEXT_LEN: u64 = 0x1000;
const REPL: u64 = TEXT + TEXT_LEN;
const REPL_LEN: u64 = 0x400;
const TABLE: u64 = 0x60_0000;

/// Memory with one mapped region; everything else is unreadable.
struct Sim {
    base: u64,
    bytes: RefCell<Vec<u8>>,
}

impl Sim {
    fn range(&self, addr: u64, len: usize) -> Option<Range<usize>> {
        let start = addr.checked_sub(self.base)? as usize;
        let end = start.checked_add(len)?;
        (end <= self.bytes.borrow().len()).then_some(start..end)
    }
}

impl Memory for Sim {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len()).ok_or(MemoryError { addr })?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }
}

impl Writer for Sim {
    unsafe fn write<C: Chunks + ?Sized>(&mut self, chunks: &C) -> Result<WriteStats, WriteError> {
        // All or nothing: every chunk is checked before the first is written.
        for c in chunks.iter() {
            self.range(c.addr, c.bytes.len())
                .ok_or(WriteError::unchanged(
                    c.addr,
                    "outside the simulated memory",
                    None,
                ))?;
        }
        for c in chunks.iter() {
            let r = self.range(c.addr, c.bytes.len()).expect("checked");
            self.bytes.borrow_mut()[r].copy_from_slice(c.bytes);
        }
        Ok(WriteStats::default())
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Text: runs of real instructions (call rel32 + 0x90 fill, nops, jmp rel8, rip-relative
/// loads, ret), so sites of random lengths sometimes are and sometimes are not whole.
fn build_memory(rng: &mut Rng, boundaries: &mut Vec<u64>) -> Vec<u8> {
    let pieces: [&[u8]; 8] = [
        &[0xe8, 0x10, 0x00, 0x00, 0x00],
        &[0x90],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0xeb, 0x02],
        &[0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00],
        &[0xc3],
        &[0xf3, 0x48, 0x0f, 0xb8, 0xc7],
        &[0x0f, 0x84, 0x20, 0x00, 0x00, 0x00],
    ];
    let mut text = Vec::new();
    while (text.len() as u64) < TEXT_LEN + REPL_LEN {
        boundaries.push(TEXT + text.len() as u64);
        text.extend_from_slice(pieces[rng.below(pieces.len() as u64) as usize]);
    }
    text.truncate((TEXT_LEN + REPL_LEN) as usize);
    text
}

fn random_entry(rng: &mut Rng, entry_addr: u64, sites: &[u64], boundaries: &[u64]) -> AltEntry {
    let site = match rng.below(12) {
        0 => rng.next() as u32 as u64,
        _ => match sites.get(rng.below(sites.len() as u64 + 1) as usize) {
            Some(s) => *s,
            None => TEXT + rng.below(TEXT_LEN + 64),
        },
    };
    let direct = rng.below(3) == 0;
    let target = if direct {
        TEXT + rng.below(TEXT_LEN + 16)
    } else if rng.below(4) == 0 {
        REPL + rng.below(REPL_LEN + 16)
    } else {
        let in_repl: Vec<&u64> = boundaries.iter().filter(|b| **b >= REPL).collect();
        *in_repl[rng.below(in_repl.len() as u64) as usize]
    };
    // Site lengths that end on an instruction boundary, mostly.
    let site_len = match boundaries.iter().position(|b| *b == site) {
        Some(i) if rng.below(5) != 0 => {
            let ends: Vec<u64> = boundaries[i + 1..]
                .iter()
                .map(|b| b - site)
                .take_while(|l| *l < 24)
                .collect();
            if ends.is_empty() {
                rng.below(24) as u8
            } else {
                ends[rng.below(ends.len() as u64) as usize] as u8
            }
        }
        _ => rng.below(24) as u8,
    };
    let cap = match rng.below(10) {
        0 => rng.below(0x1000) as u16,
        1..=4 => rng.below(0x48) as u16,
        _ => rng.below(0x27) as u16,
    };
    let mut flags = AltFlags::empty();
    if rng.below(3) == 0 {
        flags |= AltFlags::NOT;
    }
    if direct {
        flags |= AltFlags::DIRECT_CALL;
    }
    let mut key = AltEntry::make_key(cap, flags);
    if rng.below(50) == 0 {
        key |= 0x1000;
    }
    AltEntry {
        site: site.wrapping_sub(entry_addr) as i32,
        replacement: target.wrapping_sub(entry_addr + 4) as i32,
        key,
        site_len,
        replacement_len: if direct && rng.below(4) != 0 {
            0
        } else {
            rng.below(u64::from(site_len) + 2) as u8
        },
    }
}

#[test]
fn random_tables_never_panic_and_accepted_plans_are_sound() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let text = TEXT..TEXT + TEXT_LEN;
    let layout = Layout {
        text: std::slice::from_ref(&text),
        replacements: REPL..REPL + REPL_LEN,
    };
    let (mut accepted, mut refused, mut changed) = (0, 0, 0);
    for round in 0..20_000 {
        let mut boundaries = Vec::new();
        let mut sim = Sim {
            base: TEXT,
            bytes: RefCell::new(build_memory(&mut rng, &mut boundaries)),
        };
        let original = sim.bytes.borrow().clone();
        let in_text: Vec<u64> = boundaries
            .iter()
            .copied()
            .filter(|b| *b < TEXT + TEXT_LEN - 24)
            .collect();
        let sites: Vec<u64> = (0..4)
            .map(|_| in_text[rng.below(in_text.len() as u64) as usize])
            .collect();
        let n = 1 + rng.below(3) as usize;
        let entries: Vec<TableEntry> = (0..n)
            .map(|i| {
                let addr = TABLE + 12 * i as u64;
                TableEntry {
                    addr,
                    entry: random_entry(&mut rng, addr, &sites, &boundaries),
                }
            })
            .collect();
        let caps = CapabilitySet::new(
            Features::from_bits_truncate(rng.next()),
            Errata::from_bits_truncate(rng.next()),
        );
        let plan = match plan_alternatives(&entries, &layout, &caps, &sim) {
            Err(e) => {
                assert!(e.index < entries.len(), "round {round}: {e}");
                assert_eq!(e.entry_addr, entries[e.index].addr);
                refused += 1;
                continue;
            }
            Ok(p) => p,
        };
        accepted += 1;
        for s in &plan.sites {
            assert_eq!(s.after.len(), s.before.len(), "round {round}");
            assert!(
                s.addr >= TEXT && s.addr + s.after.len() as u64 <= TEXT + TEXT_LEN,
                "round {round}: site {:#x} outside the text",
                s.addr
            );
            ends_exactly(&s.after).unwrap_or_else(|e| {
                panic!(
                    "round {round}: site {:#x} new bytes {:02x?}: {e}",
                    s.addr, s.after
                )
            });
        }
        // SAFETY: the simulated memory is no one's code; nothing else runs it.
        let (prepared, mut alone) = unsafe {
            (
                Prepared::<alt_runtime::isa::X86_64>::from_alternatives(plan),
                Alone::new(),
            )
        };
        let patched = prepared
            .apply(&mut sim, &mut alone)
            .expect("apply an accepted plan");
        changed += patched.report().sites_changed();
        if patched.revert(&mut sim, &mut alone).is_err() {
            panic!("round {round}: revert failed");
        }
        assert_eq!(*sim.bytes.borrow(), original, "round {round}: revert");
    }
    eprintln!("accepted {accepted}, refused {refused}, sites changed {changed}");
    assert!(
        accepted > 1000 && refused > 1000,
        "both paths exercised: {accepted} / {refused}"
    );
    assert!(changed > 500, "accepted plans change sites: {changed}");
}
