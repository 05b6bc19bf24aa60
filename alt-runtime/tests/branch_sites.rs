//! The sites of `alt::has!`, hand-assembled: a 5-byte `jmp rel32` to the other arm or a 5-byte
//! NOP, swapped by one entry. The planner needs nothing new for them: an empty replacement turns
//! the `jmp` into NOPs, and a `jmp` copied from the replacement section is re-targeted to the
//! arm it names, like any `rel32` branch. Each shape is planned, patched, executed (the answer
//! is the function's result), checked with iced-x86, and reverted.
//!
//! ```text
//! site:  e9 <rel32 to no>   (or 0f 1f 44 00 00)
//!        b8 01 00 00 00     mov eax, 1
//!        c3                 ret
//! no:    31 c0              xor eax, eax
//!        c3                 ret
//! ```

#![cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]

mod common;

use alt_runtime::driver::Patched;
use alt_runtime::plan::Choice;
use alt_runtime::x86_64::relocate::jmp_rel32;
use alt_runtime::{Errata, Features};
use common::*;
use iced_x86::Mnemonic;

const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

fn run(addr: u64) -> u64 {
    // SAFETY: `addr` is a function this test wrote into its sealed buffer: the site, then
    // `mov eax, 1; ret` or (through the jump) `xor eax, eax; ret`.
    unsafe { call1(addr, 0) }
}

fn revert(p: Patched) {
    if let Err((_, e)) = p.revert(&mut writer(), &mut alone()) {
        panic!("revert: {e}");
    }
}

/// A has!-shaped function at text offset `off`: the site answers true by falling through and
/// false by jumping to `no`. Returns (site, no).
fn branch(buf: &Buf, off: u64, default_jumps: bool) -> (u64, u64) {
    let site = buf.text(off);
    let no = site + 11;
    let head: Vec<u8> = if default_jumps {
        jmp_rel32(site, no).unwrap().to_vec()
    } else {
        NOP5.to_vec()
    };
    buf.put(
        site,
        &cat(&[&head, &mov_eax(1), &[0xc3], &[0x31, 0xc0, 0xc3]]),
    );
    (site, no)
}

#[test]
fn a_feature_branch_is_a_jump_until_patched_then_nops() {
    let _g = lock();
    let mut buf = Buf::new();
    let (site, _) = branch(&buf, 0x100, true);
    let empty = buf.repl(0x40);
    buf.seal();
    let popcnt = feature(Features::POPCNT);
    let table = buf.table(0, &[Spec::inline(site, 5, empty, 0, popcnt)]);
    assert_eq!(run(site), 0, "unpatched: a feature answers false");

    // Without the feature: the jump stays, exactly.
    let plan = buf
        .plan(&table, &caps(Features::empty(), Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Default);
    assert_eq!(plan.sites.at(0).after, plan.sites.at(0).before);

    let plan = buf
        .plan(&table, &caps(Features::POPCNT, Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    assert_eq!(
        plan.sites.at(0).after,
        NOP5,
        "an empty replacement is a 5-byte NOP"
    );
    let p = apply(plan).unwrap();
    assert_eq!(buf.read(site, 5), NOP5);
    assert_eq!(run(site), 1, "patched: true");
    revert(p);
    assert_eq!(buf.read(site, 5), jmp_rel32(site, site + 11).unwrap());
    assert_eq!(run(site), 0, "reverted: false again");
}

#[test]
fn an_erratum_branch_falls_through_until_patched_then_jumps_to_the_other_arm() {
    let _g = lock();
    let mut buf = Buf::new();
    // The layout with the true arm falling through and a NOP by default (an erratum's `likely`):
    // the replacement is a jump from the replacement section to `no`.
    let (site, no) = branch(&buf, 0x200, false);
    let repl = buf.repl(0x80);
    buf.put(repl, &jmp_rel32(repl, no).unwrap());
    buf.seal();
    let div0 = erratum(Errata::AMD_DIV0);
    let table = buf.table(0, &[Spec::inline(site, 5, repl, 5, div0).not()]);
    assert_eq!(run(site), 1, "unpatched: an erratum answers true");

    // The erratum present: `!erratum_amd_div0` does not hold; the NOP stays.
    let plan = buf
        .plan(&table, &caps(Features::empty(), Errata::AMD_DIV0))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Default);
    assert_eq!(plan.sites.at(0).after, NOP5);

    let plan = buf
        .plan(&table, &caps(Features::empty(), Errata::empty()))
        .unwrap();
    assert_eq!(plan.sites.at(0).choice, Choice::Inline { entry: 0 });
    let want = jmp_rel32(site, no).unwrap();
    assert_eq!(
        plan.sites.at(0).after,
        want,
        "the jump re-targeted to the site"
    );
    let insns = decode_whole(&plan.sites.at(0).after, site);
    assert_eq!(insns.len(), 1);
    assert_eq!(insns[0].mnemonic(), Mnemonic::Jmp);
    assert_eq!(
        insns[0].near_branch_target(),
        no,
        "iced-x86: the jump reaches `no`"
    );
    let p = apply(plan).unwrap();
    assert_eq!(run(site), 0, "patched: false");
    revert(p);
    assert_eq!(buf.read(site, 5), NOP5);
    assert_eq!(run(site), 1);
}
