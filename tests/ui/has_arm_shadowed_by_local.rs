//! An arm calls the function item the macro checked, never a local variable of the same name
//! (which could hold an `unsafe fn` the check never saw): the function is imported with `use`,
//! which refuses a name a local variable shadows.

fn pick(x: u64) -> u64 {
    x
}

/// Must never run: only a local variable named `pick` points at it.
unsafe fn not_checked(_: u64) -> u64 {
    99
}

fn main() {
    let pick: unsafe fn(u64) -> u64 = not_checked;
    let _ = pick;
    let got = alt::has!(avx2 => pick(5), _ => 0);
    assert_ne!(got, 99);
}
