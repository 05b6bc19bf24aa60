//! Compile-fail tests: every rejected signature or argument of the macros is an error whose span
//! points at the offending token, with the message pinned in `tests/ui/*.stderr`; and the
//! programs in `tests/ui/pass/` compile and run (what is allowed stays allowed).

#[test]
fn macro_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
