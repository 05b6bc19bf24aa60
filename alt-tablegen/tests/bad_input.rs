//! Bad input: every malformed file gives an error that names the problem, never a panic.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

use alt_tablegen::scan::scan_data;
use alt_tablegen::ErrorKind;
use common::*;

const SYMS: &[&str] = &["pv_ops", "pv_func", "local_table"];

fn scan_err(name: &str, data: &[u8]) -> alt_tablegen::Error {
    scan_data(Path::new(name), data, SYMS).expect_err("malformed input must be an error")
}

#[test]
fn empty_file_is_an_error_naming_the_file() {
    let dir = scratch("empty");
    let p = write(&dir, "empty.o", "");
    let err = alt_tablegen::scan::scan_files(&[&p], SYMS).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Empty));
    assert_eq!(err.to_string(), format!("{}: empty file", p.display()));

    // And through the CLI: a message and a non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_alt-tablegen"))
        .args(["scan", "--symbol", "pv_ops"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("alt-tablegen: error: "), "{stderr}");
    assert!(stderr.contains("empty file"), "{stderr}");
}

#[test]
fn ten_random_bytes_are_not_elf() {
    let err = scan_err("r.bin", &[0x13, 0x37, 0x42, 0x99, 0, 1, 2, 3, 0xfe, 0xed]);
    assert!(matches!(err.kind, ErrorKind::NotElf));
    assert_eq!(err.to_string(), "r.bin: not an ELF file or archive");
}

#[test]
fn truncated_header_is_malformed() {
    let dir = scratch("trunc");
    let src = write(&dir, "ops.c", OPS_C);
    let obj = dir.join("ops.o");
    cc_c(&src, &obj, &["-O2", "-fno-pic"]);
    let data = std::fs::read(&obj).unwrap();
    for len in [5, 19, 30, 63] {
        let err = scan_err("t.o", &data[..len]);
        assert!(matches!(err.kind, ErrorKind::Malformed(_)), "{len}: {err}");
        assert!(err.to_string().starts_with("t.o"), "{err}");
    }
    // Cut in the section headers.
    let err = scan_err("t.o", &data[..data.len() - 10]);
    assert!(err.to_string().contains("section headers"), "{err}");
}

#[test]
fn aarch64_object_is_an_unsupported_architecture() {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Aarch64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    obj.append_section_data(text, &[0x1f, 0x20, 0x03, 0xd5], 4);
    let data = obj.write().unwrap();
    let err = scan_err("arm.o", &data);
    assert!(matches!(err.kind, ErrorKind::UnsupportedArchitecture(_)));
    assert_eq!(
        err.to_string(),
        "arm.o: unsupported architecture AArch64 (e_machine 183, 64-bit little-endian): \
         alt-tablegen reads x86-64 ELF files"
    );
}

#[test]
fn executable_without_emit_relocs_says_how_to_link_it() {
    let dir = scratch("norelocs");
    let src = write(&dir, "p.c", "int main(void) { return 0; }\n");
    let exe = dir.join("p");
    cc_link(&exe, &[&src], &["-O2"]);
    let err = alt_tablegen::scan::scan_files(&[&exe], SYMS).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::MissingRelocations), "{err}");
    assert!(err.to_string().contains("-Wl,--emit-relocs"), "{err}");

    // With --emit-relocs it scans (and finds nothing to report).
    cc_link(&exe, &[&src], &["-O2", "-Wl,--emit-relocs"]);
    let r = alt_tablegen::scan::scan_files(&[&exe], SYMS).unwrap();
    assert!(r.sites.is_empty());
}

#[test]
fn relocation_outside_its_section_is_an_error_with_its_offset() {
    let dir = scratch("outside");
    let src = write(&dir, "ops.c", OPS_C);
    let obj = dir.join("ops.o");
    cc_c(&src, &obj, &["-O2", "-fno-pic"]);
    let mut data = std::fs::read(&obj).unwrap();
    let (rela_off, _) = section_file_range(&data, ".rela.text");
    // r_offset of the first relocation: far beyond .text.
    data[rela_off..rela_off + 8].copy_from_slice(&0x10_0000u64.to_le_bytes());
    let err = scan_err("o.o", &data);
    assert!(
        err.to_string()
            .starts_with("o.o: section .text offset 0x100000: malformed ELF: relocation"),
        "{err}"
    );
    assert!(
        err.to_string().contains("lies outside the section"),
        "{err}"
    );
}

/// File offset and size of the section called `name`.
fn section_file_range(data: &[u8], name: &str) -> (usize, usize) {
    use object::{Object, ObjectSection};
    let f = object::File::parse(data).unwrap();
    let s = f.section_by_name(name).unwrap();
    let (off, size) = s.file_range().unwrap();
    (off as usize, size as usize)
}

/// File ranges of every `.rela*` section.
fn rela_ranges(data: &[u8]) -> Vec<(usize, usize)> {
    use object::{Object, ObjectSection};
    let f = object::File::parse(data).unwrap();
    f.sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".rela")))
        .filter_map(|s| s.file_range())
        .map(|(o, l)| (o as usize, l as usize))
        .collect()
}

/// xorshift64*: a fixed-seed generator so every run mutates the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A value that is often on a boundary: 0, small, the file size, huge.
    fn lie(&mut self, size: usize) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => self.next() % 64,
            2 => size as u64,
            3 => size as u64 - (self.next() % 16),
            4 => u64::MAX - (self.next() % 16),
            _ => self.next(),
        }
    }
}

fn put(data: &mut [u8], at: usize, v: u64, width: usize) {
    if at + width <= data.len() {
        data[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

fn mutate(rng: &mut Rng, orig: &[u8], relas: &[(usize, usize)]) -> Vec<u8> {
    let mut d = orig.to_vec();
    let size = d.len();
    let shoff = u64::from_le_bytes(d[0x28..0x30].try_into().unwrap()) as usize;
    let shnum = u16::from_le_bytes([d[0x3c], d[0x3d]]) as usize;
    for _ in 0..1 + rng.below(3) {
        match rng.below(9) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    if !d.is_empty() {
                        let i = rng.below(d.len());
                        d[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                let n = rng.below(d.len());
                d.truncate(n);
            }
            2 => put(&mut d, 0x28, rng.lie(size), 8), // e_shoff
            3 => put(&mut d, 0x3c, rng.lie(size), 2), // e_shnum
            4 => put(&mut d, 0x3e, rng.lie(size), 2), // e_shstrndx
            5 | 6 => {
                // A field of a section header: sh_type, sh_flags, sh_offset, sh_size, sh_link,
                // sh_info, sh_entsize.
                let sh = shoff + 64 * rng.below(shnum);
                let (field, width) =
                    [(4, 4), (8, 8), (24, 8), (32, 8), (40, 4), (44, 4), (56, 8)][rng.below(7)];
                let v = rng.lie(size);
                put(&mut d, sh + field, v, width);
            }
            _ => {
                // A relocation: its offset, or its symbol index and type.
                let (off, len) = relas[rng.below(relas.len())];
                let r = off + 24 * rng.below(len / 24);
                if rng.below(2) == 0 {
                    put(&mut d, r, rng.lie(size), 8);
                } else {
                    let sym = rng.lie(size) & 0xffff_ffff;
                    let ty = rng.below(45) as u64;
                    put(&mut d, r + 8, sym << 32 | ty, 8);
                }
            }
        }
    }
    d
}

#[test]
fn thousands_of_mutated_objects_never_panic() {
    let dir = scratch("mutate");
    let forms = write(&dir, "forms.s", FORMS_S_FOR_FUZZ);
    let c = write(&dir, "ops.c", OPS_C);
    let mut inputs = Vec::new();
    for (src, flags, name) in [
        (&forms, &[][..], "forms.o"),
        (&c, &["-O2", "-fno-pic"][..], "nopic.o"),
        (&c, &["-O2", "-fPIC", "-ffunction-sections"][..], "pic.o"),
    ] {
        let o = dir.join(name);
        cc_c(src, &o, flags);
        inputs.push(std::fs::read(&o).unwrap());
    }
    let mut rng = Rng(0x5eed_a177_ab1e);
    let mut oks = 0;
    let mut errs = 0;
    for (n, orig) in inputs.iter().enumerate() {
        let relas = rela_ranges(orig);
        assert!(!relas.is_empty());
        for i in 0..2500 {
            let m = mutate(&mut rng, orig, &relas);
            let r = catch_unwind(AssertUnwindSafe(|| {
                let r = scan_data(Path::new("m.o"), &m, SYMS);
                // Errors must format without panicking too.
                if let Err(e) = &r {
                    let _ = e.to_string();
                }
                r.is_ok()
            }));
            match r {
                Ok(true) => oks += 1,
                Ok(false) => errs += 1,
                Err(_) => panic!("input {n} mutation {i} panicked; bytes: {m:02x?}"),
            }
        }
    }
    // The mutations exercise both paths.
    assert!(oks > 500, "{oks} ok");
    assert!(errs > 500, "{errs} errors");
}

/// A smaller copy of the scan test's assembly (every form, a local table).
const FORMS_S_FOR_FUZZ: &str = r#"
	.text
	.globl f1
	.type f1,@function
f1:
	call *pv_ops+16(%rip)
	call *pv_ops+8
	jmp *pv_ops+24(%rip)
	call pv_func
	mov pv_ops+8(%rip), %rax
	lea pv_ops(%rip), %rdi
	call *local_table+8(%rip)
	ret
	.size f1, .-f1
	.data
	.type local_table,@object
local_table:
	.quad 0, 0, 0
	.size local_table, 24
	.section .note.GNU-stack,"",@progbits
"#;
