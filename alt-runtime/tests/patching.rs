//! The runtime end to end: synthetic tables and sites in a mapped buffer, planned, patched through
//! the `mprotect` writer, checked byte by byte, decoded by an independent decoder (iced-x86),
//! executed, and reverted.
//!
//! Every test that maps a buffer holds [`common::lock`] for its whole run (see there why).

#![cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]

mod common;

use alt_runtime::driver::Patched;
use alt_runtime::isa::CodeError;
use alt_runtime::memory::MemoryError;
use alt_runtime::os::linux::read_maps;
use alt_runtime::patch::PatchError;
use alt_runtime::plan::{Candidate, Choice, Plan, TableEntry, TableError, TableErrorKind};
use alt_runtime::rendezvous::{Rendezvous, RendezvousError, Spans};
use alt_runtime::table::{AltEntry, AltFlags};
use alt_runtime::x86_64::insn::DecodeError;
use alt_runtime::x86_64::relocate::{RelocError, RelocErrorKind};
use alt_runtime::{Capability, CapabilitySet, Errata, Features};
use common::*;

fn patch(plan: Plan) -> Patched {
    apply(plan).expect("apply")
}

fn revert(p: Patched) {
    if let Err((_, e)) = p.revert(&mut writer(), &mut alone()) {
        panic!("revert: {e}");
    }
}

/// Calls the function at `addr`.
fn run(addr: u64, arg: u64) -> u64 {
    // SAFETY: every address passed here is a function the test wrote into its sealed buffer:
    // straight-line code (or jumps and calls to other such functions) ending in `ret`, which
    // reads only `rdi` and memory of the buffer and returns in `rax`.
    unsafe { call1(addr, arg) }
}

fn host_has_popcnt() -> bool {
    std::arch::is_x86_feature_detected!("popcnt")
}

// --- Fixture: a popcnt site with a software fallback -------------------------------------------

/// Software popcount of `rdi` into `rax`, hand-assembled:
/// ```text
///  0: 31 c0        xor eax, eax
///  2: 48 85 ff     test rdi, rdi
///  5: 74 0e        jz 21
///  7: 48 89 f9     mov rcx, rdi
/// 10: 83 e1 01     and ecx, 1
/// 13: 48 01 c8     add rax, rcx
/// 16: 48 d1 ef     shr rdi, 1
/// 19: eb ed        jmp 2
/// 21: c3           ret
/// ```
const SW_POPCNT: [u8; 22] = [
    0x31, 0xc0, 0x48, 0x85, 0xff, 0x74, 0x0e, 0x48, 0x89, 0xf9, 0x83, 0xe1, 0x01, 0x48, 0x01, 0xc8,
    0x48, 0xd1, 0xef, 0xeb, 0xed, 0xc3,
];
/// `popcnt rax, rdi`.
const POPCNT_RAX_RDI: [u8; 5] = [0xf3, 0x48, 0x0f, 0xb8, 0xc7];
/// `mov rax, rdi; ret`.
const IDENTITY: [u8; 4] = [0x48, 0x89, 0xf8, 0xc3];

struct Popcnt {
    buf: Buf,
    /// Site: `call sw_popcnt; nop; nop; nop` (8 bytes), then `ret`.
    site: u64,
    sw: u64,
    repl: u64,
    /// Direct-call site: `call sw_popcnt; xchg ax, ax` (7 bytes), then `ret`.
    dsite: u64,
    /// `mov rax, rdi; ret`.
    identity: u64,
}

fn popcnt_fixture() -> Popcnt {
    let mut buf = Buf::new();
    let site = buf.text(0x200);
    let sw = buf.text(0x2100);
    let dsite = buf.text(0x300);
    let identity = buf.text(0x2200);
    let repl = buf.repl(0x100);
    buf.put(sw, &SW_POPCNT);
    buf.put(site, &cat(&[&call_to(site, sw), &[0x90, 0x90, 0x90, 0xc3]]));
    buf.put(dsite, &cat(&[&call_to(dsite, sw), &[0x66, 0x90, 0xc3]]));
    buf.put(identity, &IDENTITY);
    buf.put(repl, &POPCNT_RAX_RDI);
    buf.seal();
    Popcnt {
        buf,
        site,
        sw,
        repl,
        dsite,
        identity,
    }
}

// --- 1. Decisions ------------------------------------------------------------------------------

#[test]
fn present_feature_gets_the_inline_replacement_with_recommended_nops() {
    let _g = lock();
    let f = popcnt_fixture();
    let popcnt = feature(Features::POPCNT);
    let table = f
        .buf
        .table(0, &[Spec::inline(f.site, 8, f.repl, 5, popcnt)]);
    assert_eq!(run(f.site, 0xff0f), 12, "software fallback before patching");

    let plan = f
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.len(), 1);
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    assert_eq!(
        plan.sites.at(0).candidates,
        [Candidate {
            entry: 0,
            capability: popcnt,
            negated: false,
            direct_call: false,
            held: true,
            name: None,
        }]
    );
    let p = patch(plan);
    assert_eq!(
        f.buf.read(f.site, 9),
        [0xf3, 0x48, 0x0f, 0xb8, 0xc7, 0x0f, 0x1f, 0x00, 0xc3]
    );
    if host_has_popcnt() {
        assert_eq!(run(f.site, 0xff0f), 12, "popcnt instruction after patching");
    }
    revert(p);
    assert_eq!(run(f.site, 0xff0f), 12);
}

#[test]
fn absent_feature_keeps_the_default_with_its_nop_run_optimised() {
    let _g = lock();
    let f = popcnt_fixture();
    let table = f.buf.table(
        0,
        &[Spec::inline(
            f.site,
            8,
            f.repl,
            5,
            feature(Features::POPCNT),
        )],
    );
    let plan = f.buf.plan(&table, &CapabilitySet::default()).unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Default);
    assert!(!plan.sites.at(0).candidates[0].held);
    let p = patch(plan);
    let call = call_to(f.site, f.sw);
    assert_eq!(
        f.buf.read(f.site, 9),
        cat(&[&call, &[0x0f, 0x1f, 0x00, 0xc3]]),
        "the three 0x90s become one 3-byte NOP, the call stays"
    );
    assert_eq!(run(f.site, 0b1011_0111), 6);
    revert(p);
}

#[test]
fn only_one_byte_nops_are_merged_in_a_default_not_other_one_byte_instructions() {
    let _g = lock();
    let mut buf = Buf::new();
    // nop; nop; cld; nop; nop; nop | mov eax, 1; ret. `cld` is one byte too, and must stay.
    let site = buf.text(0x100);
    buf.put(
        site,
        &cat(&[&[0x90, 0x90, 0xfc, 0x90, 0x90, 0x90], &mov_eax(1), &[0xc3]]),
    );
    buf.seal();
    let table = buf.table(0, &[Spec::inline(site, 6, buf.repl(0), 0, popcnt())]);
    let p = patch(buf.plan(&table, &CapabilitySet::default()).unwrap());
    assert_eq!(
        buf.read(site, 6),
        [0x66, 0x90, 0xfc, 0x0f, 0x1f, 0x00],
        "each run of 0x90s becomes one NOP; the cld between them stays"
    );
    assert_eq!(run(site, 0), 1);
    revert(p);
}

#[test]
fn not_flag_patches_when_the_capability_is_absent() {
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let repl = buf.repl(0);
    // Default: three one-byte NOPs. Replacement: lfence.
    buf.put(site, &[0x90, 0x90, 0x90]);
    buf.put(repl, &[0x0f, 0xae, 0xe8]);
    buf.seal();
    let cap = feature(Features::LFENCE_SERIALIZING);
    let table = buf.table(0, &[Spec::inline(site, 3, repl, 3, cap).not()]);

    let plan = buf.plan(&table, &CapabilitySet::default()).unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    assert!(plan.sites.at(0).candidates[0].negated && plan.sites.at(0).candidates[0].held);
    let p = patch(plan);
    assert_eq!(buf.read(site, 3), [0x0f, 0xae, 0xe8]);
    revert(p);

    let plan = buf
        .plan(&table, &caps(Features::LFENCE_SERIALIZING, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Default);
    assert!(!plan.sites.at(0).candidates[0].held);
    let p = patch(plan);
    assert_eq!(buf.read(site, 3), [0x0f, 0x1f, 0x00]);
    revert(p);
    assert_eq!(buf.read(site, 3), [0x90, 0x90, 0x90]);
}

#[test]
fn direct_call_gets_a_hand_computed_call_rel32_and_fill() {
    let _g = lock();
    let f = popcnt_fixture();
    let table = f.buf.table(
        0,
        &[Spec::call(f.dsite, 7, f.identity, feature(Features::AVX2))],
    );
    assert_eq!(run(f.dsite, 0b111_0000), 3);
    let plan = f
        .buf
        .plan(&table, &caps(Features::AVX2, Errata::empty()))
        .unwrap();
    assert_eq!(
        plan.sites.at(0).choice,
        Choice::DirectCall {
            entry: 0,
            target: f.identity
        }
    );
    assert!(plan.sites.at(0).candidates[0].direct_call);
    let p = patch(plan);
    let rel = (f.identity as i64 - (f.dsite as i64 + 5)) as i32;
    let mut want = vec![0xe8];
    want.extend_from_slice(&rel.to_le_bytes());
    want.extend_from_slice(&[0x66, 0x90, 0xc3]);
    assert_eq!(f.buf.read(f.dsite, 8), want);
    let insns = decode_whole(&f.buf.read(f.dsite, 7), f.dsite);
    assert_eq!(insns[0].near_branch_target(), f.identity);
    assert_eq!(run(f.dsite, 0b111_0000), 0b111_0000, "now calls identity");
    revert(p);
    assert_eq!(run(f.dsite, 0b111_0000), 3);
}

#[test]
fn a_direct_call_ends_where_the_default_call_returns() {
    let _g = lock();
    let mut buf = Buf::new();
    // The macros' layout: padding first, then `call default`, ending at the site's end (9).
    let site = buf.text(0x100);
    let default = buf.text(0x800);
    let other = buf.text(0x900);
    let at = site + 4;
    buf.put(site, &cat(&[&[0x90; 4], &call_to(at, default), &[0xc3]]));
    buf.put(default, &cat(&[&mov_eax(1), &[0xc3]]));
    buf.put(other, &cat(&[&mov_eax(2), &[0xc3]]));
    buf.seal();
    let table = buf.table(0, &[Spec::call(site, 9, other, feature(Features::AVX2))]);
    let p = patch(
        buf.plan(&table, &caps(Features::AVX2, Errata::empty()))
            .unwrap(),
    );
    // A 4-byte NOP, then the call at offset 4: a thread inside either function returns to
    // offset 9 whichever bytes the site holds.
    assert_eq!(
        buf.read(site, 9),
        cat(&[&[0x0f, 0x1f, 0x40, 0x00], &call_to(at, other)])
    );
    assert_eq!(run(site, 0), 2);
    // Default kept: the NOP run before the call is optimised, the call stays where it was.
    let p2 = {
        revert(p);
        patch(buf.plan(&table, &CapabilitySet::default()).unwrap())
    };
    assert_eq!(
        buf.read(site, 9),
        cat(&[&[0x0f, 0x1f, 0x40, 0x00], &call_to(at, default)])
    );
    assert_eq!(run(site, 0), 1);
    revert(p2);
}

/// An 11-byte site at text 0x100 that calls first (`call default`, then 6 bytes of padding:
/// calls return to offset 5), and a 7-byte replacement at repl 0x10 whose second instruction
/// covers offset 5.
fn call_site_and_straddling_replacement(buf: &mut Buf) -> (u64, u64) {
    let site = buf.text(0x100);
    let default = buf.text(0x800);
    buf.put(site, &cat(&[&call_to(site, default), &[0x90; 6], &[0xc3]]));
    buf.put(default, &cat(&[&mov_eax(1), &[0xc3]]));
    let long = buf.repl(0x10);
    buf.put(long, &cat(&[&[0x31, 0xc0], &mov_eax(3)]));
    (site, long)
}

#[test]
fn fill_keeps_a_boundary_where_a_call_returns_and_a_straddling_replacement_is_refused() {
    let _g = lock();
    let mut buf = Buf::new();
    let (site, long) = call_site_and_straddling_replacement(&mut buf);
    // A 3-byte replacement: the fill keeps a boundary at 5 (a 2-byte NOP, then a 6-byte one).
    let short = buf.repl(0);
    buf.put(short, &[0x31, 0xc0, 0x90]); // xor eax, eax; nop
    buf.seal();
    let table = buf.table(
        0,
        &[Spec::inline(site, 11, short, 3, feature(Features::POPCNT))],
    );
    let p = patch(
        buf.plan(&table, &caps(Features::POPCNT, Errata::empty()))
            .unwrap(),
    );
    let got = buf.read(site, 11);
    assert_eq!(
        got,
        cat(&[&[0x31, 0xc0, 0x90], &[0x66, 0x90], LINUX_NOPS[6]])
    );
    let ends: Vec<u64> = decode_whole(&got, site)
        .iter()
        .map(|i| i.next_ip() - site)
        .collect();
    assert!(ends.contains(&5), "{ends:?}");
    revert(p);

    let table = buf.table(
        1,
        &[Spec::inline(site, 11, long, 7, feature(Features::POPCNT))],
    );
    let before = buf.snapshot();
    let e = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap_err();
    assert_eq!(
        e.kind,
        TableErrorKind::ReturnInsideInstruction {
            offset: 5,
            in_default: false
        }
    );
    assert!(e.to_string().contains("returns to offset 5"), "{e}");
    assert_eq!(buf.snapshot(), before);
}

#[test]
fn an_empty_replacement_nops_out_the_whole_site() {
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    // mov eax, 1; mov eax, 2; ret: patched, only `mov eax, 1` runs.
    buf.put(site, &cat(&[&mov_eax(1), &mov_eax(2), &[0xc3]]));
    buf.seal();
    let table = buf.table(
        0,
        &[Spec::inline(
            site + 5,
            5,
            buf.repl(0),
            0,
            feature(Features::FSRM),
        )],
    );
    assert_eq!(run(site, 0), 2);
    let p = patch(
        buf.plan(&table, &caps(Features::FSRM, Errata::empty()))
            .unwrap(),
    );
    assert_eq!(buf.read(site + 5, 5), LINUX_NOPS[5]);
    assert_eq!(run(site, 0), 1);
    revert(p);
    assert_eq!(run(site, 0), 2);
}

/// Site `mov eax, 1; nop x3; ret` with entries A (avx2 -> `mov eax, 10`) and B (popcnt ->
/// `mov eax, 11`).
struct Multi {
    buf: Buf,
    site: u64,
    a: Spec,
    b: Spec,
}

fn multi_fixture() -> Multi {
    let mut buf = Buf::new();
    let site = buf.text(0x400);
    buf.put(site, &cat(&[&mov_eax(1), &[0x90, 0x90, 0x90, 0xc3]]));
    buf.put(buf.repl(0x200), &mov_eax(10));
    buf.put(buf.repl(0x210), &mov_eax(11));
    buf.seal();
    let a = Spec::inline(site, 8, buf.repl(0x200), 5, feature(Features::AVX2));
    let b = Spec::inline(site, 8, buf.repl(0x210), 5, feature(Features::POPCNT));
    Multi { buf, site, a, b }
}

#[test]
fn first_entry_in_table_order_that_holds_wins() {
    let _g = lock();
    let m = multi_fixture();
    let both = caps(Features::AVX2 | Features::POPCNT, Errata::empty());
    let only_popcnt = caps(Features::POPCNT, Errata::empty());
    let cases: [(&[Spec], CapabilitySet, Choice, u64); 5] = [
        (&[m.a, m.b], both, Choice::Inline { entry: 0 }, 10),
        (&[m.b, m.a], both, Choice::Inline { entry: 0 }, 11),
        (&[m.a, m.b], only_popcnt, Choice::Inline { entry: 1 }, 11),
        (&[m.b, m.a], only_popcnt, Choice::Inline { entry: 0 }, 11),
        (&[m.a, m.b], CapabilitySet::default(), Choice::Default, 1),
    ];
    for (slot, (specs, caps, choice, value)) in cases.iter().enumerate() {
        let table = m.buf.table(slot as u64, specs);
        let plan = m.buf.plan(&table, caps).unwrap();
        assert_eq!(plan.sites.len(), 1, "one site, two candidates");
        let site = &plan.sites.at(0);
        assert_eq!(site.choice, *choice, "case {slot}");
        let entries: Vec<usize> = site.candidates.iter().map(|c| c.entry).collect();
        assert_eq!(entries, [0, 1], "candidates in table order");
        assert_eq!(
            site.chosen().map(|c| c.entry),
            choice.entry(),
            "case {slot}"
        );
        for c in &site.candidates {
            assert_eq!(
                c.capability_present(),
                caps.has(c.capability),
                "case {slot}"
            );
        }
        let p = patch(plan);
        let want = cat(&[&mov_eax(*value as u32), &[0x0f, 0x1f, 0x00]]);
        assert_eq!(m.buf.read(m.site, 8), want, "case {slot}");
        assert_eq!(run(m.site, 0), *value, "case {slot}");
        revert(p);
        assert_eq!(run(m.site, 0), 1);
    }
}

#[test]
fn erratum_keyed_entries_follow_the_errata_not_the_feature_with_the_same_bit() {
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let repl = buf.repl(0);
    buf.put(site, &[0x90; 5]);
    buf.put(repl, &[0x0f, 0xae, 0xe8]); // lfence
    buf.seal();
    // Errata::AMD_DIV0 is bit 0 of the errata, as Features::SSE3 is bit 0 of the features.
    let div0 = erratum(Errata::AMD_DIV0);
    assert_eq!(div0.id(), 0x40);
    let table = buf.table(0, &[Spec::inline(site, 5, repl, 3, div0)]);

    let plan = buf
        .plan(&table, &caps(Features::empty(), Errata::AMD_DIV0))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    assert_eq!(plan.sites.at(0).candidates[0].capability, div0);
    let p = patch(plan);
    assert_eq!(buf.read(site, 5), [0x0f, 0xae, 0xe8, 0x66, 0x90]);
    revert(p);

    let plan = buf
        .plan(&table, &caps(Features::all(), Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Default);
    let p = patch(plan);
    assert_eq!(buf.read(site, 5), LINUX_NOPS[5]);
    revert(p);
    assert_eq!(buf.read(site, 5), [0x90; 5]);
}

// --- 2. NOP fill lengths -----------------------------------------------------------------------

/// 64 sites `mov eax, 1` + `n` one-byte NOPs (`n` = 1..=64), each followed by `ret`, with a
/// replacement `mov eax, 2` of the same 5 bytes: patched or not, the site's tail is a fill of
/// exactly `n` bytes.
fn fill_fixture() -> (Buf, Vec<TableEntry>, Vec<u64>) {
    let mut buf = Buf::new();
    let repl = buf.repl(0);
    buf.put(repl, &mov_eax(2));
    let mut specs = Vec::new();
    let mut sites = Vec::new();
    for n in 1..=64u64 {
        let site = buf.text(n * 0x80);
        let mut code = mov_eax(1).to_vec();
        code.resize(5 + n as usize, 0x90);
        code.push(0xc3);
        buf.put(site, &code);
        specs.push(Spec::inline(
            site,
            5 + n as u8,
            repl,
            5,
            feature(Features::BMI2),
        ));
        sites.push(site);
    }
    buf.seal();
    let table = buf.table(0, &specs);
    (buf, table, sites)
}

#[test]
fn every_fill_length_after_a_replacement_decodes_to_whole_instructions() {
    let _g = lock();
    let (buf, table, sites) = fill_fixture();
    let plan = buf
        .plan(&table, &caps(Features::BMI2, Errata::empty()))
        .unwrap();
    let p = patch(plan);
    for (i, &site) in sites.iter().enumerate() {
        let n = i + 1;
        let bytes = buf.read(site, 5 + n);
        assert_eq!(
            bytes,
            cat(&[&mov_eax(2), &expected_fill(n)]),
            "fill of {n} bytes"
        );
        let insns = decode_whole(&bytes, site);
        assert_eq!(insns[0].len(), 5);
        assert_padding(&bytes[5..], site + 5);
        assert_eq!(run(site, 0), 2, "fill of {n} bytes runs through");
    }
    revert(p);
    for &site in &sites {
        assert_eq!(run(site, 0), 1);
    }
}

#[test]
fn every_default_nop_run_length_is_optimised_to_whole_instructions() {
    let _g = lock();
    let (buf, table, sites) = fill_fixture();
    let plan = buf.plan(&table, &CapabilitySet::default()).unwrap();
    let p = patch(plan);
    for (i, &site) in sites.iter().enumerate() {
        let n = i + 1;
        let bytes = buf.read(site, 5 + n);
        assert_eq!(bytes, cat(&[&mov_eax(1), &expected_fill(n)]), "run of {n}");
        decode_whole(&bytes, site);
        assert_padding(&bytes[5..], site + 5);
        assert_eq!(run(site, 0), 1, "run of {n} bytes runs through");
    }
    // A run of one byte is already optimal: that site is not written.
    assert!(!p.report().sites.at(0).changed());
    assert_eq!(p.report().sites_changed(), 63);
    revert(p);
}

// --- 3. Relocation through the planner ---------------------------------------------------------

/// Functions `mov eax, 1; nop...; ret` whose sites are replaced by code with PC-relative operands
/// that leave the replacement block.
struct Reloc {
    buf: Buf,
    sites: Vec<(u64, u8)>,
    specs: Vec<Spec>,
    /// What each function returns after patching.
    values: Vec<u64>,
    /// The absolute target each site's relocated operand must reach.
    targets: Vec<u64>,
    constant: u64,
}

const CONSTANT: u64 = 0x1122_3344_5566_7788;

fn reloc_fixture() -> Reloc {
    let mut buf = Buf::new();
    let t42 = buf.text(0x2000);
    let t7 = buf.text(0x2010);
    let t9 = buf.text(0x2020);
    let t5 = buf.text(0x3ff0);
    let constant = buf.data(0x800);
    buf.put(t42, &cat(&[&mov_eax(42), &[0xc3]]));
    buf.put(t7, &cat(&[&mov_eax(7), &[0xc3]]));
    buf.put(t9, &cat(&[&mov_eax(9), &[0xc3]]));
    buf.put(t5, &cat(&[&mov_eax(5), &[0xc3]]));
    buf.put(constant, &CONSTANT.to_le_bytes());

    let cap = feature(Features::SSE4_2);
    let mut sites = Vec::new();
    let mut specs = Vec::new();
    let mut values = Vec::new();
    let mut targets = Vec::new();
    let mut add =
        |buf: &Buf, site: u64, site_len: u8, repl: u64, code: &[u8], value: u64, target: u64| {
            let mut default = mov_eax(1).to_vec();
            default.resize(usize::from(site_len), 0x90);
            default.push(0xc3);
            buf.put(site, &default);
            buf.put(repl, code);
            sites.push((site, site_len));
            specs.push(Spec::inline(site, site_len, repl, code.len() as u8, cap));
            values.push(value);
            targets.push(target);
        };
    let rel32 = |at: u64, len: u64, target: u64| (target as i64 - (at + len) as i64) as i32;

    // call rel32 to t42 (then return what it returned).
    let r = buf.repl(0x100);
    let code = call_to(r, t42);
    add(&buf, buf.text(0x100), 8, r, &code, 42, t42);
    // jmp rel32 to t7 (a tail call).
    let r = buf.repl(0x120);
    let mut code = vec![0xe9];
    code.extend_from_slice(&rel32(r, 5, t7).to_le_bytes());
    add(&buf, buf.text(0x140), 8, r, &code, 7, t7);
    // xor eax, eax; je rel32 to t9 (taken: ZF is set).
    let r = buf.repl(0x140);
    let mut code = vec![0x31, 0xc0, 0x0f, 0x84];
    code.extend_from_slice(&rel32(r + 2, 6, t9).to_le_bytes());
    add(&buf, buf.text(0x180), 8, r, &code, 9, t9);
    // mov rax, [rip + constant].
    let r = buf.repl(0x160);
    let mut code = vec![0x48, 0x8b, 0x05];
    code.extend_from_slice(&rel32(r, 7, constant).to_le_bytes());
    add(&buf, buf.text(0x1c0), 8, r, &code, CONSTANT, constant);
    // lea rax, [rip + constant].
    let r = buf.repl(0x180);
    let mut code = vec![0x48, 0x8d, 0x05];
    code.extend_from_slice(&rel32(r, 7, constant).to_le_bytes());
    add(&buf, buf.text(0x200), 7, r, &code, constant, constant);
    // jmp rel8 from the first bytes of the replacement section back to t5 at the end of the
    // text, patched into a site just before t5: the rel8 still reaches.
    let r = buf.repl(0);
    let d = (t5 as i64 - (r as i64 + 2)) as i8;
    assert_eq!(d, -0x12);
    add(&buf, buf.text(0x3fc0), 8, r, &[0xeb, d as u8], 5, t5);

    buf.seal();
    Reloc {
        buf,
        sites,
        specs,
        values,
        targets,
        constant,
    }
}

#[test]
fn relocated_replacements_reach_their_original_targets_and_run() {
    let _g = lock();
    let r = reloc_fixture();
    let table = r.buf.table(0, &r.specs);
    let before = r.buf.snapshot();
    for &(site, _) in &r.sites {
        assert_eq!(run(site, 0), 1);
    }
    let plan = r
        .buf
        .plan(&table, &caps(Features::SSE4_2, Errata::empty()))
        .unwrap();
    let p = patch(plan);
    for (i, &(site, len)) in r.sites.iter().enumerate() {
        let bytes = r.buf.read(site, usize::from(len));
        let insns = decode_whole(&bytes, site);
        let reached: Vec<u64> = insns
            .iter()
            .filter_map(|x| {
                if x.is_ip_rel_memory_operand() {
                    Some(x.ip_rel_memory_address())
                } else if x.near_branch_target() != 0 {
                    Some(x.near_branch_target())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(reached, [r.targets[i]], "site {i}: {bytes:02x?}");
        assert_eq!(run(site, 0), r.values[i], "site {i} executes");
    }
    assert_eq!(r.values[4], r.constant);
    // The rel8 form, by hand: eb (t5 - (site + 2)) then a 6-byte NOP.
    let (site, _) = r.sites[5];
    assert_eq!(r.buf.read(site, 8), cat(&[&[0xeb, 0x2e], LINUX_NOPS[6]]));
    revert(p);
    for &(site, _) in &r.sites {
        assert_eq!(run(site, 0), 1, "reverted");
    }
    assert_eq!(r.buf.snapshot(), before);
}

#[test]
fn jmp_rel8_that_no_longer_reaches_is_a_relocation_error_naming_the_entry() {
    let _g = lock();
    let r = reloc_fixture();
    // The rel8 replacement moved to a site far from its target (entry 1; entry 0 is fine).
    let mut far = r.specs[5];
    far.site = r.sites[0].0;
    let table = r.buf.table(0, &[r.specs[1], far]);
    let before = r.buf.snapshot();
    let err = r
        .buf
        .plan(&table, &caps(Features::SSE4_2, Errata::empty()))
        .unwrap_err();
    assert_eq!(
        err,
        TableError {
            index: 1,
            entry_addr: table[1].addr,
            site: far.site,
            kind: TableErrorKind::Replacement(CodeError::X86Relocation(RelocError {
                offset: 0,
                kind: RelocErrorKind::OutOfRange {
                    target: r.targets[5]
                },
            })),
        }
    );
    assert!(err
        .to_string()
        .starts_with(&format!("alternative entry 1 at {:#x}", table[1].addr)));
    assert_eq!(r.buf.snapshot(), before);
}

#[test]
fn rip_relative_displacement_that_no_longer_fits_is_an_error_not_a_wrap() {
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let repl = buf.repl(0x10);
    buf.put(site, &cat(&[&mov_eax(1), &[0x90, 0x90]]));
    // mov rax, [rip + 0x7fff_fff0]: reachable from the replacement, 0x3f10 bytes too far from
    // the site (the target need not be mapped: only the encoding is checked).
    let code = [0x48, 0x8b, 0x05, 0xf0, 0xff, 0xff, 0x7f];
    buf.put(repl, &code);
    buf.seal();
    let target = repl + 7 + 0x7fff_fff0;
    let table = buf.table(
        0,
        &[Spec::inline(site, 7, repl, 7, feature(Features::SSE3))],
    );
    let err = buf
        .plan(&table, &caps(Features::SSE3, Errata::empty()))
        .unwrap_err();
    assert_eq!(
        err.kind,
        TableErrorKind::Replacement(CodeError::X86Relocation(RelocError {
            offset: 0,
            kind: RelocErrorKind::OutOfRange { target },
        }))
    );
    assert_eq!(
        (err.index, err.entry_addr, err.site),
        (0, table[0].addr, site)
    );
}

#[test]
fn a_site_s_grouping_error_is_reported_before_an_earlier_site_s_return_address_error() {
    // The planner plans one site at a time, but its checks keep their order over the whole
    // table: every site's grouping (lengths, overlaps, bytes) before any site's return rule.
    let _g = lock();
    let mut buf = Buf::new();
    // `long` straddles the return to offset 5 of the first site.
    let (site, long) = call_site_and_straddling_replacement(&mut buf);
    let later = buf.text(0x200);
    buf.put(later, &cat(&[&mov_eax(1), &[0x90, 0x90, 0x90, 0xc3]]));
    let short = buf.repl(0x20);
    buf.put(short, &mov_eax(2));
    buf.seal();
    let table = buf.table(
        0,
        &[
            Spec::inline(site, 11, long, 7, feature(Features::POPCNT)),
            Spec::inline(later, 8, short, 5, feature(Features::POPCNT)),
            Spec::inline(later, 5, short, 5, feature(Features::AVX2)),
        ],
    );
    let e = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap_err();
    assert_eq!(e.index, 2, "{e}");
    assert_eq!(
        e.kind,
        TableErrorKind::SiteLengthMismatch {
            other: 1,
            other_len: 8
        }
    );
    // Without the later site's error, the first site's is the one reported.
    let table = buf.table(
        1,
        &[
            Spec::inline(site, 11, long, 7, feature(Features::POPCNT)),
            Spec::inline(later, 8, short, 5, feature(Features::POPCNT)),
        ],
    );
    let e = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap_err();
    assert_eq!(e.index, 0, "{e}");
    assert!(matches!(
        e.kind,
        TableErrorKind::ReturnInsideInstruction { offset: 5, .. }
    ));
}

// --- 4. Validation: every rule, nothing written ------------------------------------------------

/// A buffer with one good site (entry 0 of every table below) and material for bad ones.
struct Bad {
    buf: Buf,
    good: Spec,
    /// `mov eax, 1; nop x3` (8 bytes) at text 0x200, and its 5-byte replacement at repl 0x20.
    site: u64,
    repl: u64,
}

fn bad_fixture() -> Bad {
    let mut buf = Buf::new();
    let good_site = buf.text(0x100);
    let site = buf.text(0x200);
    let good_repl = buf.repl(0);
    let repl = buf.repl(0x20);
    for s in [good_site, site, buf.text(0x300)] {
        buf.put(s, &cat(&[&mov_eax(1), &[0x90, 0x90, 0x90, 0xc3]]));
    }
    buf.put(good_repl, &mov_eax(2));
    buf.put(repl, &mov_eax(3));
    buf.put(buf.repl(0x40), &[0x90; 16]);
    buf.seal();
    Bad {
        good: Spec::inline(good_site, 8, good_repl, 5, feature(Features::POPCNT)),
        buf,
        site,
        repl,
    }
}

/// Plans `[good, bad...]`, expects the error on entry `index` with `kind`, and checks that the
/// buffer did not change and that the error's text names the entry.
fn expect_refusal(b: &Bad, specs: &[Spec], index: usize, kind: TableErrorKind) -> TableError {
    let mut all = vec![b.good];
    all.extend_from_slice(specs);
    let table = b.buf.table(1, &all);
    let before = b.buf.snapshot();
    let err = b
        .buf
        .plan(&table, &caps(Features::all(), Errata::all()))
        .unwrap_err();
    let bad = all[index];
    assert_eq!(
        err,
        TableError {
            index,
            entry_addr: table[index].addr,
            site: bad.site,
            kind,
        }
    );
    let text = err.to_string();
    let head = format!(
        "alternative entry {index} at {:#x} (site {:#x}): ",
        table[index].addr, bad.site
    );
    assert!(text.starts_with(&head), "{text}");
    assert_eq!(b.buf.snapshot(), before, "nothing written");
    err
}

fn popcnt() -> Capability {
    feature(Features::POPCNT)
}

#[test]
fn reserved_flag_bits_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let s = Spec::inline(b.site, 8, b.repl, 5, popcnt()).key(popcnt().id() | 0x1000);
    let e = expect_refusal(&b, &[s], 1, TableErrorKind::ReservedFlags(0x1000));
    assert!(e.to_string().ends_with("reserved flag bits 0x1000 are set"));
    let s = s.key(popcnt().id() | 0x2000 | AltFlags::NOT.bits());
    expect_refusal(&b, &[s], 1, TableErrorKind::ReservedFlags(0x2000));
}

#[test]
fn unknown_capability_ids_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let base = Spec::inline(b.site, 8, b.repl, 5, popcnt());
    // An unused feature bit, an unused erratum bit, and the reserved range.
    for id in [0x3f, 0x7f, 0x80, 0xfff] {
        let e = expect_refusal(
            &b,
            &[base.key(id)],
            1,
            TableErrorKind::UnknownCapability(id),
        );
        assert!(e
            .to_string()
            .ends_with(&format!("unknown capability id {id:#05x}")));
    }
}

#[test]
fn empty_sites_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let s = Spec::inline(b.site, 0, b.repl, 0, popcnt());
    expect_refusal(&b, &[s], 1, TableErrorKind::EmptySite);
}

#[test]
fn sites_outside_the_text_or_in_the_replacement_section_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let k = TableErrorKind::SiteOutsideText;
    // In the data page.
    let s = Spec::inline(b.buf.data(0xf00), 8, b.repl, 5, popcnt());
    expect_refusal(&b, &[s], 1, k.clone());
    // Inside the text range, but in the replacement section.
    let s = Spec::inline(b.buf.repl(0x40), 8, b.repl, 5, popcnt());
    expect_refusal(&b, &[s], 1, k.clone());
    // Straddling the end of the sites' text into the replacement section.
    let s = Spec::inline(b.buf.text(TEXT_LEN - 4), 8, b.repl, 5, popcnt());
    expect_refusal(&b, &[s], 1, k.clone());
    // Straddling the end of the text range into the data page.
    let s = Spec::inline(b.buf.repl(0xffc), 8, b.repl, 5, popcnt());
    expect_refusal(&b, &[s], 1, k);
}

#[test]
fn replacements_outside_their_section_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    // In the text, not in the replacement section.
    let r = b.buf.text(0x300);
    let s = Spec::inline(b.site, 8, r, 5, popcnt());
    expect_refusal(
        &b,
        &[s],
        1,
        TableErrorKind::ReplacementOutsideSection { replacement: r },
    );
    // Running off the end of the section.
    let r = b.buf.repl(PAGE - 3);
    let s = Spec::inline(b.site, 8, r, 5, popcnt());
    expect_refusal(
        &b,
        &[s],
        1,
        TableErrorKind::ReplacementOutsideSection { replacement: r },
    );
}

#[test]
fn replacements_longer_than_their_site_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let s = Spec::inline(b.site, 8, b.buf.repl(0x40), 9, popcnt());
    let e = expect_refusal(
        &b,
        &[s],
        1,
        TableErrorKind::ReplacementTooLong {
            replacement_len: 9,
            site_len: 8,
        },
    );
    assert!(e
        .to_string()
        .ends_with("replacement of 9 bytes is longer than the site of 8 bytes"));
}

#[test]
fn bad_direct_calls_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let target = b.buf.text(0x300);
    let mut s = Spec::call(b.site, 8, target, popcnt());
    s.repl_len = 5;
    expect_refusal(&b, &[s], 1, TableErrorKind::DirectCallWithReplacement);

    // A site of 4 bytes (checked before any byte is read).
    let s = Spec::call(b.site, 4, target, popcnt());
    expect_refusal(&b, &[s], 1, TableErrorKind::DirectCallSiteTooShort);

    for target in [b.buf.data(0), b.buf.repl(0x40), b.buf.none(0)] {
        let s = Spec::call(b.site, 8, target, popcnt());
        expect_refusal(
            &b,
            &[s],
            1,
            TableErrorKind::CallTargetOutsideText { target },
        );
    }
}

#[test]
fn entries_for_one_site_must_agree_on_its_length() {
    let _g = lock();
    let b = bad_fixture();
    let first = Spec::inline(b.site, 8, b.repl, 5, popcnt());
    let second = Spec::inline(b.site, 5, b.repl, 5, feature(Features::AVX2));
    let e = expect_refusal(
        &b,
        &[first, second],
        2,
        TableErrorKind::SiteLengthMismatch {
            other: 1,
            other_len: 8,
        },
    );
    assert!(e
        .to_string()
        .ends_with("site length differs from entry 1 for the same site (8 bytes)"));
}

#[test]
fn overlapping_sites_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    // Site at text 0x200 (8 bytes) and one starting at its sixth byte, listed first in the
    // table: the error names the later site in address order, and the other entry.
    let later = Spec::inline(b.site + 5, 3, b.buf.repl(0x40), 3, popcnt());
    let earlier = Spec::inline(b.site, 8, b.repl, 5, popcnt());
    expect_refusal(
        &b,
        &[later, earlier],
        1,
        TableErrorKind::Overlap {
            other: 2,
            other_site: b.site,
        },
    );
}

#[test]
fn sites_that_touch_each_other_or_the_replacement_section_are_patched() {
    let _g = lock();
    let mut buf = Buf::new();
    let default = cat(&[&mov_eax(1), &[0x90; 3]]);
    // Two sites back to back, and one that ends where the replacement section begins.
    let first = buf.text(0x400);
    let second = first + 8;
    let last = buf.text(TEXT_LEN - 8);
    for s in [first, second, last] {
        buf.put(s, &default);
    }
    let repl = buf.repl(0);
    buf.put(repl, &mov_eax(7));
    // A site that begins where the replacement section ends (in the data page, which this
    // test's layout counts as text): planned only.
    let after = buf.data(0);
    buf.put(after, &default);
    buf.seal();
    let specs = [
        Spec::inline(second, 8, repl, 5, popcnt()),
        Spec::inline(first, 8, repl, 5, popcnt()),
        Spec::inline(last, 8, repl, 5, popcnt()),
    ];
    let table = buf.table(1, &specs);
    let set = caps(Features::POPCNT, Errata::empty());
    let p = patch(buf.plan(&table, &set).unwrap());
    let patched = cat(&[&mov_eax(7), &[0x0f, 0x1f, 0x00]]);
    for s in [first, second, last] {
        assert_eq!(buf.read(s, 8), patched, "site {s:#x}");
    }
    revert(p);

    let text = buf.base..buf.base + NONE;
    let layout = alt_runtime::plan::Layout {
        text: std::slice::from_ref(&text),
        replacements: buf.repl_range(),
    };
    let table = buf.table(2, &[Spec::inline(after, 8, repl, 5, popcnt())]);
    let plan = alt_runtime::plan::plan_alternatives(&table, &layout, &set, &writer()).unwrap();
    assert_eq!(plan.sites.at(0).addr, after);
    assert_eq!(plan.sites.at(0).after, patched);
}

#[test]
fn sites_that_are_not_whole_instructions_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    // 3 bytes of the 5-byte `mov eax, 1`.
    let s = Spec::inline(b.site, 3, b.buf.repl(0x40), 3, popcnt());
    let e = expect_refusal(&b, &[s], 1, kind_of_decode_error(&b, s));
    match e.kind {
        TableErrorKind::Site(CodeError::X86Decode(d)) => assert_eq!(d.offset, 0),
        k => panic!("{k:?}"),
    }
    // A byte that does not decode: `06` (push es) is invalid in 64-bit mode.
    let site = b.buf.text(0x300);
    b.buf.put(site, &[0x06, 0x90, 0x90]);
    let s = Spec::inline(site, 3, b.buf.repl(0x40), 3, popcnt());
    let e = expect_refusal(&b, &[s], 1, kind_of_decode_error(&b, s));
    match e.kind {
        TableErrorKind::Site(CodeError::X86Decode(d)) => assert_eq!(d.offset, 0),
        k => panic!("{k:?}"),
    }
}

/// The decode error the runtime reports for a spec's site bytes (its reason text is the
/// decoder's own; the tests check the offset).
fn kind_of_decode_error(b: &Bad, s: Spec) -> TableErrorKind {
    let bytes = b.buf.read(s.site, usize::from(s.site_len));
    let e: DecodeError = alt_runtime::x86_64::insn::ends_exactly(&bytes).unwrap_err();
    TableErrorKind::Site(CodeError::X86Decode(e))
}

#[test]
fn unreadable_sites_are_refused() {
    let _g = lock();
    let b = bad_fixture();
    let site = b.buf.none(0x10);
    let text = vec![
        b.buf.text_ranges()[0].clone(),
        b.buf.none(0)..b.buf.none(PAGE),
    ];
    let layout = alt_runtime::plan::Layout {
        text: &text,
        replacements: b.buf.repl_range(),
    };
    let table = b
        .buf
        .table(1, &[b.good, Spec::inline(site, 8, b.repl, 5, popcnt())]);
    let err = alt_runtime::plan::plan_alternatives(
        &table,
        &layout,
        &caps(Features::POPCNT, Errata::empty()),
        &writer(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        TableError {
            index: 1,
            entry_addr: table[1].addr,
            site,
            kind: TableErrorKind::Unreadable(MemoryError { addr: site }),
        }
    );
}

#[test]
fn placeholders_are_skipped_and_still_count_in_entry_indices() {
    let _g = lock();
    let b = bad_fixture();
    let bad = Spec::inline(b.site, 8, b.repl, 5, popcnt()).key(0x80);
    let table = b.buf.table(2, &[Spec::placeholder(), b.good, bad]);
    // Read back through the in-memory view, as a hosted program reads its own section.
    // SAFETY: the table was just written to the data page, 4-byte aligned, 3 entries long.
    let slice: &[AltEntry] =
        unsafe { std::slice::from_raw_parts(table[0].addr as *const AltEntry, 3) };
    let entries: Vec<TableEntry> = TableEntry::in_memory(slice).collect();
    let err = b
        .buf
        .plan(&entries, &caps(Features::POPCNT, Errata::empty()))
        .unwrap_err();
    assert_eq!(err.index, 2, "the index is the entry's place in the table");
    assert_eq!(err.entry_addr, table[2].addr);

    let table = b.buf.table(3, &[Spec::placeholder(), b.good]);
    let plan = b
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.len(), 1);
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 1 });
}

// --- 5. Expected bytes -------------------------------------------------------------------------

#[test]
fn a_site_changed_after_planning_is_refused_and_nothing_is_written() {
    let _g = lock();
    let b = bad_fixture();
    let second = Spec::inline(b.site, 8, b.repl, 5, popcnt());
    let table = b.buf.table(0, &[b.good, second]);
    let plan = b
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let original = b.buf.read(b.site, 8);
    // Someone else rewrites the second site: mov eax, 1 -> mov eax, 0x41.
    b.buf.put(b.site + 1, &[0x41]);
    let found = b.buf.read(b.site, 8);
    let before = b.buf.snapshot();
    let err = apply(plan).unwrap_err();
    assert!(err.leftover.is_none(), "nothing is left to undo");
    assert_eq!(
        err.error,
        PatchError::UnexpectedBytes {
            addr: b.site,
            expected: original,
            found: found.clone(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "site at {:#x} holds unexpected bytes (expected b801000000909090, found \
             b841000000909090); nothing was changed",
            b.site
        )
    );
    assert_eq!(b.buf.snapshot(), before, "the first site was not written");
    assert_eq!(
        b.buf.read(b.good.site, 8),
        cat(&[&mov_eax(1), &[0x90, 0x90, 0x90]])
    );
}

#[test]
fn revert_refuses_a_site_changed_after_patching_and_hands_the_record_back() {
    let _g = lock();
    let b = bad_fixture();
    let pristine = b.buf.snapshot();
    let second = Spec::inline(b.site, 8, b.repl, 5, popcnt());
    let table = b.buf.table(0, &[b.good, second]);
    let plan = b
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let p = patch(plan);
    let written = b.buf.read(b.site, 8);
    assert_eq!(written, cat(&[&mov_eax(3), &[0x0f, 0x1f, 0x00]]));
    b.buf.put(b.site + 1, &[0x44]);
    let changed = b.buf.read(b.site, 8);
    let before = b.buf.snapshot();
    let (p, err) = match p.revert(&mut writer(), &mut alone()) {
        Ok(_) => panic!("revert over changed bytes succeeded"),
        Err(x) => x,
    };
    assert_eq!(
        err,
        PatchError::UnexpectedBytes {
            addr: b.site,
            expected: written.clone(),
            found: changed,
        }
    );
    assert_eq!(b.buf.snapshot(), before, "nothing reverted");
    assert_eq!(
        b.buf.read(b.good.site, 8),
        cat(&[&mov_eax(2), &[0x0f, 0x1f, 0x00]]),
        "the first site is still patched"
    );
    // The record handed back still reverts once the site holds what was written.
    b.buf.put(b.site, &written);
    revert(p);
    // The table was written to the data page after `pristine`: compare text and replacements.
    assert_eq!(
        b.buf.read(b.buf.base, DATA as usize),
        pristine[..DATA as usize]
    );
}

// --- 6. Revert is byte-identical ---------------------------------------------------------------

#[test]
fn revert_restores_every_byte() {
    let _g = lock();
    let r = reloc_fixture();
    let f = popcnt_fixture();
    let (fb, ft, _) = fill_fixture();
    for (buf, table, set) in [
        (
            &r.buf,
            r.buf.table(0, &r.specs),
            caps(Features::SSE4_2, Errata::empty()),
        ),
        (
            &f.buf,
            f.buf.table(
                0,
                &[
                    Spec::inline(f.site, 8, f.repl, 5, popcnt()),
                    Spec::call(f.dsite, 7, f.identity, popcnt()),
                ],
            ),
            caps(Features::POPCNT, Errata::empty()),
        ),
        (&fb, ft, CapabilitySet::default()),
    ] {
        let before = buf.snapshot();
        let p = patch(buf.plan(&table, &set).unwrap());
        assert_ne!(buf.snapshot(), before);
        let pages = p.report().pages;
        let stats = p
            .revert(&mut writer(), &mut alone())
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(stats.pages, pages);
        assert_eq!(buf.snapshot(), before);
    }
}

#[test]
fn a_plan_that_changes_nothing_writes_nothing() {
    let _g = lock();
    let b = bad_fixture();
    // Default `mov eax, 1` + 3-byte NOP: already optimal.
    b.buf.put(b.site + 5, &[0x0f, 0x1f, 0x00]);
    let table = b
        .buf
        .table(0, &[Spec::inline(b.site, 8, b.repl, 5, popcnt())]);
    let p = patch(b.buf.plan(&table, &CapabilitySet::default()).unwrap());
    assert_eq!(p.report().sites_changed(), 0);
    assert_eq!(p.report().pages, 0);
    revert(p);
}

// --- 7. W^X and protections --------------------------------------------------------------------

fn page_perms(buf: &Buf) -> Vec<String> {
    let maps = read_maps().unwrap();
    (0..PAGES)
        .map(|i| {
            let a = buf.base + i * PAGE;
            maps.iter()
                .find(|m| m.range.contains(&a))
                .map_or(String::from("unmapped"), |m| m.perms.clone())
        })
        .collect()
}

fn assert_no_writable_executable_mapping() {
    let wx: Vec<_> = read_maps()
        .unwrap()
        .into_iter()
        .filter(|m| m.is_writable_and_executable())
        .collect();
    assert!(wx.is_empty(), "writable and executable: {wx:#x?}");
}

#[test]
fn no_mapping_is_writable_and_executable_after_patching_and_protections_are_restored() {
    let _g = lock();
    let r = reloc_fixture();
    let perms = page_perms(&r.buf);
    assert_eq!(
        perms,
        ["r-xp", "r-xp", "r-xp", "r-xp", "r-xp", "rw-p", "---p"]
    );
    assert_no_writable_executable_mapping();
    let table = r.buf.table(0, &r.specs);
    let p = patch(
        r.buf
            .plan(&table, &caps(Features::SSE4_2, Errata::empty()))
            .unwrap(),
    );
    // Sites on text pages 0 and 3.
    assert_eq!(p.report().pages, 2);
    assert_no_writable_executable_mapping();
    assert_eq!(page_perms(&r.buf), perms);
    revert(p);
    assert_no_writable_executable_mapping();
    assert_eq!(page_perms(&r.buf), perms);
}

/// A rendezvous that cannot stop the others.
struct Refusing;

// SAFETY: it never lets anyone write.
unsafe impl Rendezvous for Refusing {
    fn stop(&mut self, _sites: &dyn Spans) -> Result<(), RendezvousError> {
        Err(RendezvousError {
            who: Some(42),
            ..RendezvousError::new("thread did not stop")
        })
    }

    fn release(&mut self) {
        panic!("released without a stop");
    }
}

#[test]
fn nothing_is_written_when_the_others_cannot_be_stopped() {
    let _g = lock();
    let b = bad_fixture();
    let table = b.buf.table(0, &[b.good]);
    let plan = b
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let before = b.buf.snapshot();
    // SAFETY: as `common::apply`.
    let prepared: alt_runtime::driver::Prepared =
        unsafe { alt_runtime::driver::Prepared::from_alternatives(plan) };
    let err = prepared.apply(&mut writer(), &mut Refusing).unwrap_err();
    assert!(err.leftover.is_none());
    assert_eq!(
        err.to_string(),
        "cannot stop the other threads: thread did not stop (thread 42); nothing was changed"
    );
    assert_eq!(b.buf.snapshot(), before, "nothing written");
}

// --- 8. Report ---------------------------------------------------------------------------------

#[test]
fn report_json_and_text_describe_every_site() {
    let _g = lock();
    let f = popcnt_fixture();
    let buf = &f.buf;
    let n_site = buf.text(0x500);
    let n_repl = buf.repl(0x300);
    let mut entries = Vec::new();
    // 0: popcnt inline at site (holds).  1: avx2 direct call at dsite (does not hold).
    // 2: popcnt direct call at dsite (holds, wins).  3: !lfence_serializing at n_site (does not
    // hold: the feature is present).
    entries.push(Spec::inline(f.site, 8, f.repl, 5, popcnt()));
    entries.push(Spec::call(f.dsite, 7, f.identity, feature(Features::AVX2)));
    entries.push(Spec::call(f.dsite, 7, f.identity, popcnt()));
    buf.put(n_site, &[0x90, 0x90, 0x90]);
    buf.put(n_repl, &[0x0f, 0xae, 0xe8]);
    let lfs = feature(Features::LFENCE_SERIALIZING);
    entries.push(Spec::inline(n_site, 3, n_repl, 3, lfs).not());
    let table = buf.table(0, &entries);
    let set = caps(
        Features::POPCNT | Features::LFENCE_SERIALIZING,
        Errata::AMD_DIV0,
    );
    let p = patch(buf.plan(&table, &set).unwrap());
    let report = p.report();

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(
        json["capabilities"]["features"],
        serde_json::json!(["popcnt", "lfence_serializing"])
    );
    assert_eq!(
        json["capabilities"]["errata"],
        serde_json::json!(["erratum_amd_div0"])
    );
    let sites = json["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 3);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let dcall = call_to(f.dsite, f.identity);
    let expect = [
        (
            f.site,
            8,
            "popcnt",
            "entry 0",
            "inline",
            Some(0),
            "popcnt (present) holds",
            cat(&[&call_to(f.site, f.sw), &[0x90; 3]]),
            cat(&[&POPCNT_RAX_RDI, &[0x0f, 0x1f, 0x00]]),
        ),
        (
            f.dsite,
            7,
            "popcnt",
            "entry 2",
            "direct_call",
            Some(2),
            "popcnt (present) holds",
            cat(&[&call_to(f.dsite, f.sw), &[0x66, 0x90]]),
            cat(&[&dcall, &[0x66, 0x90]]),
        ),
        (
            n_site,
            3,
            "lfence_serializing",
            "default",
            "default",
            None,
            "no entry holds: !lfence_serializing (present)",
            vec![0x90; 3],
            vec![0x0f, 0x1f, 0x00],
        ),
    ];
    for (s, (addr, len, cap, variant, decision, entry, why, before, after)) in
        sites.iter().zip(&expect)
    {
        assert_eq!(s["address"], *addr, "{s}");
        assert_eq!(s["length"], *len);
        assert_eq!(s["function"], serde_json::Value::Null);
        assert_eq!(s["capability"], *cap);
        assert_eq!(s["variant"], *variant);
        assert_eq!(s["decision"], *decision);
        assert_eq!(s["entry"], serde_json::json!(entry));
        assert_eq!(s["why"], *why);
        assert_eq!(s["before"], hex(before));
        assert_eq!(s["after"], hex(after));
    }
    assert_eq!(
        json["totals"],
        serde_json::json!([
            {"capability": "popcnt", "applied": 2, "not_applied": 0},
            {"capability": "avx2", "applied": 0, "not_applied": 1},
            {"capability": "lfence_serializing", "applied": 0, "not_applied": 1},
        ])
    );
    assert_eq!(json["sites_changed"], 3);
    let changed: usize = expect
        .iter()
        .map(|e| e.7.iter().zip(&e.8).filter(|(a, b)| a != b).count())
        .sum();
    assert_eq!(json["bytes_changed"], changed);
    assert_eq!(json["pages"], 1);

    let text = report.to_string();
    for (addr, ..) in &expect {
        assert!(text.contains(&format!("site {addr:#x} ")), "{text}");
    }
    assert!(text.contains("capability popcnt       applied at 2 site(s), not applied 0 time(s)"));
    assert!(text.contains("capability avx2         applied at 0 site(s), not applied 1 time(s)"));
    assert!(text.contains(&format!(
        "3 site(s), 3 changed, {changed} byte(s) changed, 1 page(s) touched"
    )));
    assert!(
        text.contains("    after:  f3 48 0f b8 c7 0f 1f 00"),
        "{text}"
    );
    assert_eq!(
        report.totals().iter().map(|t| t.applied).sum::<usize>(),
        3 - 1,
        "two sites applied an entry, one kept its default"
    );
    revert(p);
}

// --- 9. Tables together ------------------------------------------------------------------------

/// A rendezvous that records what it was asked to keep the others out of, and how often it
/// released them.
#[derive(Default)]
struct Recording {
    stops: Vec<Vec<std::ops::Range<u64>>>,
    releases: usize,
}

// SAFETY: the tests that use it run their sites on their own thread only, after the write.
unsafe impl Rendezvous for Recording {
    fn stop(&mut self, sites: &dyn Spans) -> Result<(), RendezvousError> {
        self.stops
            .push((0..sites.len()).map(|i| sites.span(i)).collect());
        Ok(())
    }

    fn release(&mut self) {
        self.releases += 1;
    }
}

/// A paravirt table of one operation (C ABI, no inline sequence) whose slot is at data 0xe00,
/// the backend `Function(target)`, and one entry at data 0xf00 for a 6-byte site at `site`
/// holding `call qword ptr [rip + slot]`.
struct OneOp {
    ops: [alt_runtime::paravirt::OpDesc; 1],
    choices: [alt_runtime::paravirt::OpChoice; 1],
    slot: u64,
    entry: alt_runtime::paravirt::PvTableEntry,
}

fn one_op(buf: &Buf, site: u64, native: u64, target: u64) -> OneOp {
    use alt_runtime::paravirt::{OpChoice, OpDesc, PvTableEntry};
    use alt_runtime::table::{relative, Clobbers, PvEntry};
    let slot = buf.data(0xe00);
    buf.put(slot, &native.to_le_bytes());
    let entry_addr = buf.data(0xf00);
    OneOp {
        ops: [OpDesc {
            name: "op",
            native,
            native_thunk: None,
            dispatch_thunk: None,
            dispatch_slot: 0,
            inline: None,
            clobbers: Clobbers::C_ABI,
            returns: true,
        }],
        choices: [OpChoice::Function(target)],
        slot,
        entry: PvTableEntry {
            addr: entry_addr,
            entry: PvEntry {
                site: relative(entry_addr, site).unwrap(),
                op: 0,
                site_len: 6,
                clobbers: Clobbers::C_ABI.bits(),
            },
        },
    }
}

/// `call qword ptr [rip + slot]` placed at `at`.
fn call_slot(at: u64, slot: u64) -> [u8; 6] {
    let d = ((slot as i64 - (at as i64 + 6)) as i32).to_le_bytes();
    [0xff, 0x15, d[0], d[1], d[2], d[3]]
}

/// Plans the alternatives `table` together with the paravirt table `pv` over `buf`.
fn plan_both(
    buf: &Buf,
    table: &[TableEntry],
    set: CapabilitySet,
    pv: &OneOp,
) -> Result<alt_runtime::driver::Prepared, alt_runtime::driver::PlanError> {
    use alt_runtime::paravirt::{Backend, TableDesc};
    let text = buf.text_ranges();
    let layout = alt_runtime::plan::Layout {
        text: &text,
        replacements: buf.repl_range(),
    };
    let desc = TableDesc {
        name: "T",
        table: pv.slot,
        ops: &pv.ops,
        entries: 0..0,
    };
    let backend = Backend {
        name: "b",
        ops: &pv.choices,
    };
    // SAFETY: the layout is the test buffer; the table's slot is in its data page and its
    // functions lie in its text; the sites run only on this thread, after the write.
    let patcher = unsafe {
        alt_runtime::driver::Patcher::new(set, layout)
            .alternatives(table.iter().copied())
            .paravirt_entries(desc, backend, vec![pv.entry], None)
    };
    patcher.plan(&writer())
}

#[test]
fn sites_of_two_tables_may_touch_but_not_overlap() {
    use alt_runtime::driver::PlanError;
    let _g = lock();
    let mut buf = Buf::new();
    let alt_site = buf.text(0x100);
    let native = buf.text(0x800);
    let function = buf.text(0x900);
    let repl = buf.repl(0);
    // Text 0x100: `mov eax, 1; nop x3` (an 8-byte alternative site), then at 0x108 the 6-byte
    // paravirt site: the two touch.
    buf.put(alt_site, &cat(&[&mov_eax(1), &[0x90; 3]]));
    let pv_site = alt_site + 8;
    let slot = buf.data(0xe00);
    buf.put(pv_site, &call_slot(pv_site, slot));
    // Text 0x200: `xchg ax, ax` then the indirect call (8 bytes, whole instructions), the
    // paravirt site starting inside it, at 0x202.
    let wide = buf.text(0x200);
    buf.put(wide, &cat(&[&[0x66, 0x90], &call_slot(wide + 2, slot)]));
    buf.put(repl, &mov_eax(2));
    buf.seal();
    let set = caps(Features::POPCNT, Errata::empty());

    let table = buf.table(0, &[Spec::inline(alt_site, 8, repl, 5, popcnt())]);
    let pv = one_op(&buf, pv_site, native, function);
    let prepared = plan_both(&buf, &table, set, &pv).expect("touching sites are fine");
    let p = prepared.apply(&mut writer(), &mut alone()).expect("apply");
    assert_eq!(
        buf.read(alt_site, 8),
        cat(&[&mov_eax(2), &[0x0f, 0x1f, 0x00]])
    );
    // The direct call ends where the indirect call ended: a one-byte NOP first.
    assert_eq!(
        buf.read(pv_site, 6),
        cat(&[&[0x90], &call_to(pv_site + 1, function)])
    );
    revert(p);

    let table = buf.table(1, &[Spec::inline(wide, 8, repl, 5, popcnt())]);
    let pv = one_op(&buf, wide + 2, native, function);
    let before = buf.snapshot();
    let err = plan_both(&buf, &table, set, &pv).unwrap_err();
    assert_eq!(
        err,
        PlanError::SitesOverlap {
            first: wide,
            second: wide + 2
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the site at {:#x} begins inside the site at {wide:#x} of another table",
            wide + 2
        )
    );
    assert!(buf.snapshot() == before, "nothing written");
}

#[test]
fn the_rendezvous_keeps_the_others_out_of_exactly_the_sites_that_change() {
    let _g = lock();
    let b = bad_fixture();
    // Three sites: two change (popcnt holds), the third keeps its default, already optimal.
    let third = b.buf.text(0x300);
    b.buf.put(third + 5, &[0x0f, 0x1f, 0x00]);
    let table = b.buf.table(
        0,
        &[
            b.good,
            Spec::inline(b.site, 8, b.repl, 5, popcnt()),
            Spec::inline(third, 8, b.repl, 5, feature(Features::AVX2)),
        ],
    );
    let plan = b
        .buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let mut r = Recording::default();
    // SAFETY: as `common::apply`.
    let prepared: alt_runtime::driver::Prepared =
        unsafe { alt_runtime::driver::Prepared::from_alternatives(plan) };
    let p = prepared.apply(&mut writer(), &mut r).expect("apply");
    let sites = vec![b.good.site..b.good.site + 8, b.site..b.site + 8];
    assert_eq!(r.stops, std::slice::from_ref(&sites));
    assert_eq!(r.releases, 1);
    let mut r = Recording::default();
    p.revert(&mut writer(), &mut r).map_err(|(_, e)| e).unwrap();
    assert_eq!(r.stops, [sites]);
    assert_eq!(r.releases, 1);
}

/// Writes a name table of `(target, name)` pairs at data offset `at` (the `&'static str`s at
/// `at + 0x40`), as the macros emit `alt_site_names` and `alt_entry_names`, and returns it.
fn name_table(
    buf: &Buf,
    at: u64,
    names: &[(u64, &'static str)],
) -> &'static [alt_runtime::linker::NameEntry] {
    use alt_runtime::linker::NameEntry;
    use alt_runtime::table::relative;
    assert!(names.len() <= 4);
    let table = buf.data(at);
    for (i, &(target, name)) in names.iter().enumerate() {
        let entry = table + 8 * i as u64;
        let holder = buf.data(at + 0x40 + 16 * i as u64);
        // SAFETY: `holder` is 8-aligned, in the buffer's data page (read-write) and no other
        // reference to it exists.
        unsafe { std::ptr::write(holder as *mut &'static str, name) };
        let n = NameEntry {
            target: relative(entry, target).unwrap(),
            name: relative(entry + 4, holder).unwrap(),
        };
        // SAFETY: as above, 4-aligned.
        unsafe { std::ptr::write(entry as *mut NameEntry, n) };
    }
    // SAFETY: the entries were just written and stay in the buffer for the whole test, which
    // looks names up only while the buffer lives (the `&'static str`s point at string
    // literals; a table out of address order is copied by `Names::new`).
    unsafe { std::slice::from_raw_parts(table as *const NameEntry, names.len()) }
}

/// The entries of `table` where they lie, as a table that lives for good: the caller leaks the
/// buffer holding them (`std::mem::forget`).
fn for_good(table: &[TableEntry]) -> &'static [AltEntry] {
    // SAFETY: the entries were written there, 4-aligned, in a buffer the caller never unmaps.
    unsafe { std::slice::from_raw_parts(table[0].addr as *const AltEntry, table.len()) }
}

#[test]
fn a_table_read_where_it_lies_plans_as_the_same_table_listed() {
    use alt_runtime::driver::{Patcher, PlanError};
    let _g = lock();
    let b = bad_fixture();
    let text = b.buf.text_ranges();
    let layout = || alt_runtime::plan::Layout {
        text: &text,
        replacements: b.buf.repl_range(),
    };
    let c = caps(Features::POPCNT, Errata::empty());
    let plan_both = |specs: &[Spec]| {
        let table = b.buf.table(0, specs);
        // SAFETY: the entries were just written there, 4-aligned, in the buffer that outlives
        // this closure's plans.
        let in_place: &[AltEntry] =
            unsafe { std::slice::from_raw_parts(table[0].addr as *const AltEntry, table.len()) };
        // SAFETY: the layout and the table are the test buffer's.
        let listed = unsafe { Patcher::new(c, layout()) }
            .alternatives(table.iter().copied())
            .plan(&writer())
            .map(|p| p.alternatives().clone());
        // SAFETY: as above.
        let read = unsafe { Patcher::new(c, layout()) }
            .alternatives_in_memory(in_place)
            .plan(&writer())
            .map(|p| p.alternatives().clone());
        // SAFETY: as above.
        let for_good = unsafe { Patcher::new(c, layout()) }
            .alternatives_static(for_good(&table))
            .plan(&writer())
            .map(|p| p.alternatives().clone());
        assert_eq!(for_good, read, "a table kept in place plans the same");
        (listed, read)
    };
    let specs = [
        b.good,
        Spec::inline(b.site, 8, b.repl, 5, feature(Features::AVX2)),
        Spec::inline(b.site, 8, b.repl, 5, popcnt()),
    ];
    let (listed, read) = plan_both(&specs);
    assert_eq!(read, listed);
    let plan = read.unwrap();
    assert_eq!(plan.sites.len(), 2);
    assert_eq!(plan.sites.at(1).choice, Choice::Inline { entry: 2 });
    // A refusal names the same entry, at its address in the table.
    let bad = [b.good, Spec::inline(b.site, 0, b.repl, 5, popcnt())];
    let (listed, read) = plan_both(&bad);
    assert_eq!(read, listed);
    assert!(matches!(
        read,
        Err(PlanError::Table(TableError { index: 1, .. }))
    ));
    // Sites all alike (one entry, eight bytes each), every one changing.
    let third = b.buf.text(0x300);
    let alike = [b.good, Spec::inline(third, 8, b.repl, 5, popcnt())];
    let (listed, read) = plan_both(&alike);
    assert_eq!(read, listed);
    assert_eq!(read.unwrap().sites.len(), 2);
    // Written and restored from the table kept in place (the batch of sites all alike).
    let table = b.buf.table(0, &alike);
    // SAFETY: as above.
    let patched = unsafe { Patcher::new(c, layout()) }
        .alternatives_static(for_good(&table))
        .plan(&writer())
        .unwrap()
        .apply(&mut writer(), &mut alone())
        .unwrap();
    assert_eq!((run(b.good.site, 0), run(third, 0)), (2, 3));
    revert(patched);
    assert_eq!((run(b.good.site, 0), run(third, 0)), (1, 1));
    // The plans read the table where it lies for as long as they live.
    std::mem::forget(b);
}

#[test]
fn the_report_names_each_site_s_function_and_each_entry_s_variant() {
    use alt_runtime::driver::Patcher;
    use alt_runtime::linker::Names;
    let _g = lock();
    let b = bad_fixture();
    let third = b.buf.text(0x300);
    let specs = [
        b.good,
        Spec::inline(b.site, 8, b.repl, 5, feature(Features::AVX2)),
        Spec::inline(b.site, 8, b.repl, 5, popcnt()),
        Spec::inline(third, 8, b.repl, 5, popcnt()),
    ];
    let table = b.buf.table(0, &specs);
    // Names for the first two sites (not the third), and for entries 0 and 2 (not 1 or 3).
    let sites = name_table(&b.buf, 0xc00, &[(b.site, "second"), (b.good.site, "first")]);
    let entries = name_table(
        &b.buf,
        0xd00,
        &[
            (table[2].addr, "popcnt_inline"),
            (table[0].addr, "good_one"),
        ],
    );
    // SAFETY: the name tables were just written and point at string literals.
    let names = unsafe { Names::new(sites, entries) };
    let text = b.buf.text_ranges();
    let layout = alt_runtime::plan::Layout {
        text: &text,
        replacements: b.buf.repl_range(),
    };
    // SAFETY: the layout and the table are the test buffer's.
    let patcher = unsafe { Patcher::new(caps(Features::POPCNT, Errata::empty()), layout.clone()) }
        .alternatives(table.iter().copied())
        .names(names.clone());
    let prepared = patcher.plan(&writer()).unwrap();
    let preview = prepared.preview();
    // The table kept where it lies for good: the same report, names and all, and the same
    // bytes written and restored.
    // SAFETY: as above.
    let kept = unsafe { Patcher::new(caps(Features::POPCNT, Errata::empty()), layout.clone()) }
        .alternatives_static(for_good(&table))
        .names(names);
    let kept = kept.plan(&writer()).unwrap();
    assert_eq!(kept.preview(), preview);
    revert(kept.apply(&mut writer(), &mut alone()).unwrap());
    let named: Vec<_> = preview
        .sites
        .iter()
        .map(|s| {
            let variants: Vec<_> = s.candidates.iter().map(|c| c.name).collect();
            (s.addr, s.function, variants, s.variant())
        })
        .collect();
    assert_eq!(
        named,
        [
            (
                b.good.site,
                Some("first"),
                vec![Some("good_one")],
                String::from("good_one")
            ),
            (
                b.site,
                Some("second"),
                vec![None, Some("popcnt_inline")],
                String::from("popcnt_inline")
            ),
            (third, None, vec![None], String::from("entry 3")),
        ]
    );
    assert_eq!(preview.pages, 0, "a preview writes nothing");
    let p = prepared.apply(&mut writer(), &mut alone()).unwrap();
    assert_eq!(
        *p.report(),
        alt_runtime::report::Report {
            pages: 1,
            ..preview
        },
        "apply reports what the preview showed, and the page it wrote"
    );
    revert(p);
    // The record read the table where it lies.
    std::mem::forget(b);
}

#[test]
fn the_record_says_which_capabilities_patching_used_and_holds_the_time_taken() {
    let _g = lock();
    let b = bad_fixture();
    // POPCNT holds at the first site; AVX2 (absent) and the DIV0 erratum (absent) are
    // considered at the second, which keeps its default.
    let table = b.buf.table(
        0,
        &[
            b.good,
            Spec::inline(b.site, 8, b.repl, 5, feature(Features::AVX2)),
            Spec::inline(b.site, 8, b.repl, 5, erratum(Errata::AMD_DIV0)),
        ],
    );
    let set = caps(Features::POPCNT | Features::SSE3, Errata::ZENBLEED);
    let plan = b.buf.plan(&table, &set).unwrap();
    let used = caps(Features::POPCNT | Features::AVX2, Errata::AMD_DIV0);
    assert_eq!(plan.used(), used);
    // SAFETY: as `common::apply`.
    let prepared: alt_runtime::driver::Prepared =
        unsafe { alt_runtime::driver::Prepared::from_alternatives(plan.clone()) };
    assert_eq!(*prepared.alternatives(), plan);
    assert!(prepared.paravirt().is_empty());
    let mut p = prepared.apply(&mut writer(), &mut alone()).unwrap();
    assert_eq!(p.used(), used);
    assert!(p.slots().is_empty());
    assert_eq!(p.report().elapsed_ns, None);
    p.set_elapsed_ns(Some(1234));
    assert_eq!(p.report().elapsed_ns, Some(1234));
    revert(p);
}

#[test]
fn a_paravirt_install_records_each_slot_it_stored_and_revert_restores_it() {
    use alt_runtime::patch::SlotWrite;
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let native = buf.text(0x800);
    let function = buf.text(0x900);
    let slot = buf.data(0xe00);
    buf.put(site, &call_slot(site, slot));
    buf.seal();
    let pv = one_op(&buf, site, native, function);
    let load = || buf.read(slot, 8);
    let prepared = plan_both(&buf, &[], CapabilitySet::default(), &pv).unwrap();
    assert_eq!(prepared.paravirt().len(), 1);
    assert_eq!(prepared.paravirt()[0].slots.len(), 1);
    let p = prepared.apply(&mut writer(), &mut alone()).unwrap();
    assert_eq!(
        p.slots(),
        [SlotWrite {
            addr: slot,
            old: native,
            new: function
        }]
    );
    assert_eq!(load(), function.to_le_bytes());
    assert_eq!(
        buf.read(site, 6),
        cat(&[&[0x90], &call_to(site + 1, function)])
    );
    revert(p);
    assert_eq!(load(), native.to_le_bytes());
    assert_eq!(buf.read(site, 6), call_slot(site, slot));
}

#[test]
fn revert_skips_a_slot_already_restored_and_refuses_one_changed_behind_its_back() {
    let _g = lock();
    let mut buf = Buf::new();
    let site = buf.text(0x100);
    let native = buf.text(0x800);
    let function = buf.text(0x900);
    let slot = buf.data(0xe00);
    buf.put(site, &call_slot(site, slot));
    buf.seal();
    let pv = one_op(&buf, site, native, function);
    let p = plan_both(&buf, &[], CapabilitySet::default(), &pv)
        .unwrap()
        .apply(&mut writer(), &mut alone())
        .unwrap();
    // Someone else stores a third value: the revert refuses, writes nothing, and hands the
    // record back.
    buf.put(slot, &0x4242u64.to_le_bytes());
    let patched = buf.snapshot();
    let (p, e) = match p.revert(&mut writer(), &mut alone()) {
        Ok(_) => panic!("revert over a changed slot succeeded"),
        Err(x) => x,
    };
    assert_eq!(
        e,
        PatchError::UnexpectedSlot {
            addr: slot,
            expected: function,
            found: 0x4242
        }
    );
    assert!(buf.snapshot() == patched, "nothing written");
    // The slot already holds its old value: it is skipped, the site is reverted.
    buf.put(slot, &native.to_le_bytes());
    p.revert(&mut writer(), &mut alone())
        .map_err(|(_, e)| e)
        .unwrap();
    assert_eq!(buf.read(site, 6), call_slot(site, slot));
    assert_eq!(buf.read(slot, 8), native.to_le_bytes());
}

#[test]
fn many_replacements_that_move_unchanged_do_not_stand_in_for_one_that_must_be_relocated() {
    let _g = lock();
    let buf = Buf::new();
    let target = buf.text(0x3000);
    let cap = feature(Features::POPCNT);
    // 320 five-byte sites. Most replacements are `mov eax, imm32` (position independent, each
    // different); every eighth from the 65th on is a `call` whose rel32 must change when it
    // moves to its site. The planner decodes a replacement that moves unchanged once and
    // remembers it by its bytes: a call must never be mistaken for one of those.
    let mut specs = Vec::new();
    let mut expected = Vec::new();
    for i in 0..320u64 {
        let site = buf.text(8 * i);
        let repl = buf.repl(5 * i);
        buf.put(site, &mov_eax(1));
        let code = if i >= 64 && i % 8 == 0 {
            buf.put(repl, &call_to(repl, target));
            call_to(site, target)
        } else {
            buf.put(repl, &mov_eax(1000 + i as u32));
            mov_eax(1000 + i as u32)
        };
        specs.push(Spec::inline(site, 5, repl, 5, cap));
        expected.push((site, code.to_vec()));
    }
    let table: Vec<TableEntry> = specs
        .chunks(64)
        .enumerate()
        .flat_map(|(slot, s)| buf.table(slot as u64, s))
        .collect();
    let plan = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.len(), expected.len());
    let wrong: Vec<_> = plan
        .sites
        .iter()
        .zip(&expected)
        .filter(|(s, (site, code))| (s.addr, &s.after[..]) != (*site, &code[..]))
        .map(|(s, (_, code))| (s.addr, s.after.to_vec(), code.clone()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} sites planned wrong bytes, the first (site, got, expected): {:02x?}",
        wrong.len(),
        wrong[0]
    );
}

#[test]
fn sites_that_share_one_replacement_each_get_the_call_relocated_to_them() {
    let _g = lock();
    let buf = Buf::new();
    let target = buf.text(0x3000);
    // One `call target` in the replacement section, used by three sites, and one
    // position-independent `mov eax, 7` used by two.
    let call = buf.repl(0);
    let mov = buf.repl(0x10);
    buf.put(call, &call_to(call, target));
    buf.put(mov, &mov_eax(7));
    let sites: Vec<u64> = (1..=5).map(|i| buf.text(0x100 * i)).collect();
    for &s in &sites {
        buf.put(s, &mov_eax(1));
    }
    let cap = feature(Features::POPCNT);
    let specs = [
        Spec::inline(sites[0], 5, call, 5, cap),
        Spec::inline(sites[1], 5, mov, 5, cap),
        Spec::inline(sites[2], 5, call, 5, cap),
        Spec::inline(sites[3], 5, mov, 5, cap),
        Spec::inline(sites[4], 5, call, 5, cap),
    ];
    let table = buf.table(0, &specs);
    let plan = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let got: Vec<Vec<u8>> = plan.sites.iter().map(|s| s.after.to_vec()).collect();
    assert_eq!(
        got,
        [
            call_to(sites[0], target),
            mov_eax(7),
            call_to(sites[2], target),
            mov_eax(7),
            call_to(sites[4], target),
        ]
    );
}

#[test]
fn a_replacement_relocated_for_one_site_is_never_reused_for_the_next() {
    let _g = lock();
    let buf = Buf::new();
    let target = buf.text(0x3000);
    // Four sites in a row with one `call target` replacement: the planner remembers only
    // replacements that move unchanged, so each site gets the call relocated to it (were the
    // first site's relocated bytes remembered, the others would call elsewhere).
    let call = buf.repl(0);
    buf.put(call, &call_to(call, target));
    let sites: Vec<u64> = (1..=4).map(|i| buf.text(0x100 * i)).collect();
    let cap = feature(Features::POPCNT);
    let specs: Vec<Spec> = sites
        .iter()
        .map(|&s| {
            buf.put(s, &mov_eax(1));
            Spec::inline(s, 5, call, 5, cap)
        })
        .collect();
    let table = buf.table(0, &specs);
    let plan = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    let got: Vec<Vec<u8>> = plan.sites.iter().map(|s| s.after.to_vec()).collect();
    let want: Vec<Vec<u8>> = sites.iter().map(|&s| call_to(s, target).to_vec()).collect();
    assert_eq!(got, want);
}

/// A site of five one-byte NOPs, `call rax` at offset 5 (returning to 7) and a NOP: a direct
/// call placed here ends at 7 and so covers offsets 2 to 7.
fn call_rax_site(buf: &Buf, at: u64) -> u64 {
    let site = buf.text(at);
    buf.put(site, &cat(&[&[0x90; 5], &[0xff, 0xd0], &[0x90]]));
    site
}

#[test]
fn a_return_inside_the_direct_call_is_refused_and_one_at_its_start_is_kept() {
    let _g = lock();
    let buf = Buf::new();
    let other = buf.text(0x800);
    let far = buf.text(0x900);
    let avx2 = feature(Features::AVX2);
    let popcnt = feature(Features::POPCNT);

    // A replacement calling at offset 0 returns to 5, inside the direct call (2 to 7).
    let site = call_rax_site(&buf, 0x100);
    let repl = buf.repl(0);
    buf.put(repl, &call_to(repl, far));
    let table = buf.table(
        0,
        &[
            Spec::call(site, 8, other, avx2),
            Spec::inline(site, 8, repl, 5, popcnt),
        ],
    );
    let e = buf
        .plan(&table, &caps(Features::AVX2, Errata::empty()))
        .unwrap_err();
    assert_eq!(
        (e.index, e.kind),
        (
            0,
            TableErrorKind::ReturnInsideInstruction {
                offset: 5,
                in_default: false
            }
        )
    );

    // `call rax` as the replacement returns to 2, where the direct call starts: fine.
    let site = call_rax_site(&buf, 0x200);
    let repl = buf.repl(0x10);
    buf.put(repl, &[0xff, 0xd0]);
    let table = buf.table(
        1,
        &[
            Spec::call(site, 8, other, avx2),
            Spec::inline(site, 8, repl, 2, popcnt),
        ],
    );
    let plan = buf
        .plan(&table, &caps(Features::AVX2, Errata::empty()))
        .unwrap();
    assert_eq!(
        plan.sites.at(0).after,
        cat(&[&[0x66, 0x90], &call_to(site + 2, other), &[0x90]])
    );
}

#[test]
fn a_direct_call_may_fill_a_site_of_exactly_its_length() {
    let _g = lock();
    let buf = Buf::new();
    let site = buf.text(0x100);
    let default = buf.text(0x800);
    let other = buf.text(0x900);
    buf.put(site, &call_to(site, default));
    let table = buf.table(0, &[Spec::call(site, 5, other, feature(Features::AVX2))]);
    let plan = buf
        .plan(&table, &caps(Features::AVX2, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).after, call_to(site, other));
}

#[test]
fn a_default_s_nops_are_merged_only_where_no_call_returns_inside_them() {
    let _g = lock();
    let buf = Buf::new();
    let popcnt = feature(Features::POPCNT);
    let none = CapabilitySet::default();
    // `call default` then six one-byte NOPs: calls return to 5, the start of the NOP run, so
    // the run is merged into one 6-byte NOP.
    let site = buf.text(0x100);
    let default = buf.text(0x800);
    buf.put(site, &cat(&[&call_to(site, default), &[0x90; 6]]));
    let repl = buf.repl(0);
    buf.put(repl, &[0x31, 0xc0, 0x90]);
    let table = buf.table(0, &[Spec::inline(site, 11, repl, 3, popcnt)]);
    let plan = buf.plan(&table, &none).unwrap();
    assert_eq!(
        plan.sites.at(0).after,
        cat(&[&call_to(site, default), LINUX_NOPS[6]])
    );

    // Eight one-byte NOPs, and a replacement `call rax` that returns to 2: one 8-byte NOP
    // would swallow that boundary, so the default stays as it is.
    let site = buf.text(0x200);
    buf.put(site, &[0x90; 8]);
    let repl = buf.repl(0x10);
    buf.put(repl, &[0xff, 0xd0]);
    let table = buf.table(1, &[Spec::inline(site, 8, repl, 2, popcnt)]);
    let plan = buf.plan(&table, &none).unwrap();
    assert_eq!(plan.sites.at(0).after, [0x90; 8]);
}

#[test]
fn the_fill_after_a_direct_call_keeps_a_boundary_where_a_later_call_returns() {
    let _g = lock();
    let buf = Buf::new();
    // `call default` then seven one-byte NOPs. Another entry's replacement (5 bytes of NOPs,
    // then a call) returns to 10: the direct call ends at 5, and its fill keeps offset 10.
    let site = buf.text(0x100);
    let default = buf.text(0x800);
    let other = buf.text(0x900);
    let far = buf.text(0xa00);
    buf.put(site, &cat(&[&call_to(site, default), &[0x90; 7]]));
    let repl = buf.repl(0);
    buf.put(
        repl,
        &cat(&[&[0x0f, 0x1f, 0x00, 0x66, 0x90], &call_to(repl + 5, far)]),
    );
    let table = buf.table(
        0,
        &[
            Spec::call(site, 12, other, feature(Features::AVX2)),
            Spec::inline(site, 12, repl, 10, feature(Features::POPCNT)),
        ],
    );
    let plan = buf
        .plan(&table, &caps(Features::AVX2, Errata::empty()))
        .unwrap();
    assert_eq!(
        plan.sites.at(0).after,
        cat(&[&call_to(site, other), LINUX_NOPS[5], LINUX_NOPS[2]])
    );
}

#[test]
fn first_overlap_sorts_the_sites_and_names_the_first_two_that_overlap() {
    use alt_runtime::driver::first_overlap;
    let mut sites = [0x30..0x38, 0x10..0x18, 0x18..0x20, 0x34..0x40];
    assert_eq!(first_overlap(&mut sites), Some((0x30, 0x34)));
    assert_eq!(sites, [0x10..0x18, 0x18..0x20, 0x30..0x38, 0x34..0x40]);
    // Sites that touch do not overlap.
    let mut touching = [0x18..0x20, 0x10..0x18, 0x20..0x21];
    assert_eq!(first_overlap(&mut touching), None);
    assert_eq!(first_overlap(&mut []), None);
}
