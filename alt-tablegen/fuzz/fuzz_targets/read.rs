//! Fuzzes the reading path: any bytes, as a file, an archive or an ELF object, through scan
//! (read + decode) and inspect. Every input must give `Ok` or `Err`, never a panic.
//!
//! Findings become regression tests in `alt-tablegen/tests/bad_input.rs`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-input");
    if let Err(e) = alt_tablegen::scan::scan_data(path, data, &["pv_ops", "pv_func"]) {
        let _ = e.to_string();
    }
    if let Ok(objects) = alt_tablegen::read::objects(path, data) {
        for obj in &objects {
            if let Ok(tables) = alt_tablegen::inspect::Tables::read(obj) {
                let _ = alt_tablegen::inspect::verify(obj, &tables);
            }
        }
    }
});
