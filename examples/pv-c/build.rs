//! Compiles `csrc/ops_user.c`, finds its calls through `PV_OPS` from their relocations, writes
//! their table into the section `alt_pv_PV_OPS` (beside the Rust sites' entries) and links both.

use std::fmt::Write as _;

use alt_tablegen::build::{Build, LinkMode};
use alt_tablegen::scan::{Anchor, Form};

fn main() {
    // The whole build-script flow. `BinObjects`: only the `pv-c` binary, which defines `PV_OPS`,
    // links the C code; the integration tests do not define it.
    let mut build = Build::new("PV_OPS", "PV_OPS");
    build
        .file("csrc/ops_user.c")
        .link_mode(LinkMode::BinObjects);
    // Keep every reference to the table a call the runtime patches: no table address hoisted
    // into a register by GCC's global CSE under -fPIE (`lea PV_OPS(%rip), %r15` ...
    // `call *(%r15)`), and calls in tail position only where the C code asks for them (the
    // `c_tail_*` functions), so that the test knows each site's form.
    build
        .cc()
        .opt_level(2)
        .flag("-fno-optimize-sibling-calls")
        .flag("-fno-gcse");
    let out = build
        .compile("pv_c")
        .unwrap_or_else(|e| panic!("alt-tablegen: {e}"));
    println!("cargo:rerun-if-changed=csrc/pv_ops.h");

    // Every reference to the table must have become a patchable call or tail-call site.
    for s in out.emitted.entries.iter().chain(&out.emitted.skipped) {
        assert!(
            s.form == Form::CallRip || s.form == Form::JmpRip,
            "{}: {}+{:#x}: PV_OPS is referenced by a `{}` instruction ({}); see the compiler \
             flags above",
            s.file,
            s.section,
            s.offset,
            s.form.name(),
            alt_tablegen::scan::to_hex(&s.bytes),
        );
    }

    // For the program's report and the tests: where the C sites are (function + offset, op),
    // and the objects, which the tests scan again themselves.
    let mut sites = String::from("/// C call sites: (function, offset in it, op).\n");
    sites.push_str("pub const C_SITES: &[(&str, u64, u8)] = &[\n");
    for s in &out.emitted.entries {
        let Anchor::Symbol { name, delta } = &s.anchor else {
            panic!("{}: no symbol anchors the site at {:#x}", s.file, s.offset);
        };
        let op = s.op.expect("a table call has an op");
        writeln!(sites, "    ({name:?}, {delta}, {op}),").unwrap();
    }
    sites.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(format!("{out_dir}/c_sites.rs"), sites).expect("write c_sites.rs");
    let objects = std::env::join_paths(&out.objects).expect("object paths");
    println!(
        "cargo:rustc-env=PV_C_OBJECTS={}",
        objects.to_str().expect("UTF-8 object paths")
    );
}
