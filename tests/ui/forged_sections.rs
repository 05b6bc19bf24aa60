// Safe code cannot make up section bounds: `Sections`' methods turn them into `'static` slices.
fn main() {
    let s = alt::linker::Sections {
        alt_instr: (0x1000, 0x1030),
        alt_replacement: (0, 0),
        site_names: (0, 0),
        entry_names: (0, 0),
    };
    let _ = s.alt_entries();
}
