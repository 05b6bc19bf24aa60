//! Helpers shared by the integration tests: a scratch directory per test and running the
//! system C compiler, assembler and archiver to build fixtures.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh, empty scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("alt-tablegen-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch directory");
    dir
}

/// Runs a command and returns its stdout; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `source` to `dir/name` and returns its path.
pub fn write(dir: &Path, name: &str, source: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, source).expect("write fixture source");
    p
}

/// Compiles (or assembles) `src` into `out` with `cc -c` and the given flags.
pub fn cc_c(src: &Path, out: &Path, flags: &[&str]) {
    run(Command::new("cc")
        .args(flags)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out));
}

/// Links with `cc`.
pub fn cc_link(out: &Path, args: &[&Path], flags: &[&str]) {
    run(Command::new("cc").args(flags).args(args).arg("-o").arg(out));
}

/// The C fixture: calls through an operations table, as paravirt code does.
pub const OPS_C: &str = r#"
struct ops { long (*a)(long); long (*b)(long); long (*c)(long); };
extern struct ops pv_ops;
long call_b(long x) { return pv_ops.b(x) + 1; }
long call_a(long x) { return pv_ops.a(x) * 3; }
long tail_c(long x) { return pv_ops.c(x); }
void *addr(void) { return &pv_ops; }
"#;

/// A program that defines `pv_ops`, walks the `alt_pv_pv` table and prints each entry and
/// its site's bytes, then calls the fixture's functions.
pub const MAIN_C: &str = r#"
#include <stdio.h>
#include <stdint.h>
struct pv_entry { int32_t site; uint8_t op; uint8_t site_len; uint16_t clobbers; };
extern const struct pv_entry __start_alt_pv_pv[], __stop_alt_pv_pv[];
struct ops { long (*a)(long); long (*b)(long); long (*c)(long); };
static long fa(long x) { return x + 100; }
static long fb(long x) { return x + 200; }
static long fc(long x) { return x + 300; }
struct ops pv_ops = { fa, fb, fc };
long call_b(long), call_a(long), tail_c(long);
int main(void) {
  for (const struct pv_entry *e = __start_alt_pv_pv; e < __stop_alt_pv_pv; e++) {
    const uint8_t *site = (const uint8_t *)&e->site + e->site;
    printf("entry op=%u len=%u clobbers=%#x addr=%#lx bytes=", e->op, e->site_len,
           e->clobbers, (unsigned long)site);
    for (int i = 0; i < e->site_len; i++) printf("%02x", site[i]);
    printf("\n");
  }
  printf("results %ld %ld %ld\n", call_b(1), call_a(1), tail_c(1));
  return 0;
}
"#;
