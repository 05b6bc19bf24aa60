//! The kernel linker-script fragment `link/alt.ld`, linked for real with the system's GNU ld:
//! a well-formed table links and its bounds symbols frame it; a table that is not a whole
//! number of 12-byte entries fails the link with the fragment's fix-it message.

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = "\
ENTRY(_start)
SECTIONS {
  . = 0x400000;
  .text : { *(.text*) }
  INCLUDE alt.ld
  /DISCARD/ : { *(.note*) *(.comment) }
}
";

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("linker-script-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Links `_start: ret` plus `entry_words` zero words in `alt_instr` with the fragment.
fn link(name: &str, entry_words: usize) -> (bool, String, PathBuf) {
    link_with(name, "alt_instr", entry_words)
}

/// Links `_start: ret` plus `words` zero words in `section` with the fragment, and the
/// paravirt fragment of the table `PV_OPS` (`write_paravirt_section`), as a kernel's build
/// script writes it.
fn link_with(name: &str, section: &str, words: usize) -> (bool, String, PathBuf) {
    let dir = scratch(name);
    let mut pv = String::new();
    alt_runtime::linker::write_paravirt_section(&mut pv, "PV_OPS").unwrap();
    std::fs::write(dir.join("alt-pv.ld"), pv).unwrap();
    std::fs::write(
        dir.join("t.ld"),
        SCRIPT.replace("INCLUDE alt.ld", "INCLUDE alt.ld\n  INCLUDE alt-pv.ld"),
    )
    .unwrap();
    let words = vec!["0"; words].join(", ");
    std::fs::write(
        dir.join("t.s"),
        format!(
            ".globl _start\n.text\n_start: ret\n\
             .pushsection {section},\"aR\",@progbits\n.balign 4\n.long {words}\n.popsection\n"
        ),
    )
    .unwrap();
    let out = Command::new("cc")
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--build-id=none",
            "-Wl,-T,t.ld",
        ])
        .arg("-L")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("link"))
        .arg("-L")
        .arg(&dir)
        .args(["t.s", "-o", "prog"])
        .current_dir(&dir)
        .output()
        .expect("run cc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr, dir.join("prog"))
}

fn symbol(prog: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(prog).output().expect("run nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap_or_else(|| panic!("{name} not in nm output:\n{text}"));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

#[test]
fn whole_entries_link_and_are_framed_by_the_bounds() {
    let (ok, stderr, prog) = link("good", 6);
    assert!(ok, "{stderr}");
    let start = symbol(&prog, "__start_alt_instr");
    let stop = symbol(&prog, "__stop_alt_instr");
    assert_eq!(stop - start, 24, "two 12-byte entries");
    assert_eq!(start % 4, 0);
    // The other sections of the fragment exist (empty) with their bounds.
    assert_eq!(
        symbol(&prog, "__start_alt_replacement"),
        symbol(&prog, "__stop_alt_replacement")
    );
}

#[test]
fn a_partial_entry_fails_the_link_with_the_fix_it_message() {
    let (ok, stderr, _) = link("bad", 2);
    assert!(!ok, "an 8-byte alt_instr linked");
    assert!(
        stderr.contains(
            "alt: alt_instr is not a whole number of 12-byte entries; an object was built for \
             another alt ABI, or something else was placed in alt_instr"
        ),
        "{stderr}"
    );
}

#[test]
fn paravirt_entries_link_framed_by_their_bounds_and_a_partial_one_fails() {
    let (ok, stderr, prog) = link_with("pv-good", "alt_pv_PV_OPS", 4);
    assert!(ok, "{stderr}");
    let start = symbol(&prog, "__start_alt_pv_PV_OPS");
    assert_eq!(
        symbol(&prog, "__stop_alt_pv_PV_OPS") - start,
        16,
        "two 8-byte entries"
    );
    assert_eq!(start % 4, 0);

    let (ok, stderr, _) = link_with("pv-bad", "alt_pv_PV_OPS", 3);
    assert!(!ok, "a 12-byte alt_pv_PV_OPS linked");
    assert!(
        stderr.contains(
            "alt: alt_pv_PV_OPS is not a whole number of 8-byte paravirt entries; an object was \
             built for another alt ABI, or something else was placed in alt_pv_PV_OPS"
        ),
        "{stderr}"
    );
}

#[test]
fn dependents_find_the_fragment_on_their_link_search_path() {
    // The build script copied it into its OUT_DIR and put that on the link search path.
    let out = Path::new(env!("OUT_DIR"));
    assert_eq!(
        std::fs::read_to_string(out.join("alt.ld")).unwrap(),
        alt_runtime::linker::LINKER_SCRIPT
    );
}
