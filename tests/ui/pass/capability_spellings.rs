//! Every spelling of a dotted capability name is accepted: `sse4.2`, `sse4_2`, `SSE4.2`,
//! `sse4-2` and the string `"sse4.2"`; the site's entries all carry SSE4.2's id.
use alt::alternative;

#[alternative(sse4.2 => a, sse4_2 => b, SSE4.2 => c, sse4-2 => d, "sse4.2" => e, !SSE4_1 => f)]
fn pick(x: u32) -> u32 {
    x
}
fn a(x: u32) -> u32 { x }
fn b(x: u32) -> u32 { x }
fn c(x: u32) -> u32 { x }
fn d(x: u32) -> u32 { x }
fn e(x: u32) -> u32 { x }
fn f(x: u32) -> u32 { x }

fn main() {
    assert_eq!(pick(7), 7);
    let sse42 = alt::Capability::from_name("sse4.2").unwrap().id();
    let sse41 = alt::Capability::from_name("sse4.1").unwrap().id();
    let entries = alt::linker::sections().alt_entries();
    let mut ids: Vec<u16> = entries
        .iter()
        .filter(|e| e.site_len != 0)
        .map(|e| e.capability_id())
        .collect();
    ids.sort();
    assert_eq!(ids, [sse41, sse42, sse42, sse42, sse42, sse42]);
}
