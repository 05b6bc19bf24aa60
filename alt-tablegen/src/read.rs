//! Reading inputs: ELF x86-64 relocatable objects, static archives (`.a`, `.rlib`) and final
//! executables, shared objects and kernel images linked with `--emit-relocs`.
//!
//! Files are mapped with `memmap2`, never read into memory, so scanning a kernel image costs
//! page cache, not heap. Every error names the file, the archive member, the section and the
//! offset it is about, and no input, however malformed, makes this module panic.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use object::elf;
use object::read::archive::{ArchiveFile, ArchiveKind};
use object::read::elf::{FileHeader, SectionHeader, SectionTable, SymbolTable};
use object::LittleEndian;

/// The ELF header type this crate reads: 64-bit, little-endian.
pub type Elf64 = elf::FileHeader64<LittleEndian>;
/// A section header of an [`Elf64`] file.
pub type SectionHeader64 = elf::SectionHeader64<LittleEndian>;
/// A symbol of an [`Elf64`] file.
pub type Sym64 = elf::Sym64<LittleEndian>;

pub(crate) const LE: LittleEndian = LittleEndian;

/// Where an error is: the file, and as far as known the archive member, section and offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The file given on the command line (or to the library).
    pub file: PathBuf,
    /// The archive member, for objects inside `.a` / `.rlib` archives.
    pub member: Option<String>,
    /// The section name.
    pub section: Option<String>,
    /// A byte offset: within the section when `section` is set, else within the file or member.
    pub offset: Option<u64>,
}

impl Location {
    /// A location naming only a file.
    pub fn file(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            ..Self::default()
        }
    }

    /// This location with a section name.
    pub fn in_section(mut self, section: impl Into<String>) -> Self {
        self.section = Some(section.into());
        self
    }

    /// This location with an offset.
    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(m) = &self.member {
            write!(f, "({m})")?;
        }
        if let Some(s) = &self.section {
            write!(f, ": section {s}")?;
        }
        if let Some(o) = self.offset {
            write!(f, " offset {o:#x}")?;
        }
        Ok(())
    }
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be opened or mapped.
    Io(io::Error),
    /// The file (or archive member) is empty.
    Empty,
    /// Neither an ELF file nor an archive.
    NotElf,
    /// An ELF file for another architecture (or 32-bit, or big-endian).
    UnsupportedArchitecture(String),
    /// The file is not well formed: the string says what is wrong.
    Malformed(String),
    /// A final binary without relocation sections for its executable sections.
    MissingRelocations,
    /// An operation that needs a relocatable object got a final binary.
    NotRelocatable,
    /// An operation that needs a linked binary got a relocatable object.
    NotLinked,
    /// A site that a table object cannot refer to, with the reason.
    Unanchorable(String),
    /// Any other failure, described.
    Other(String),
}

/// An error while reading, scanning, emitting or inspecting, with its [`Location`].
#[derive(Debug)]
pub struct Error {
    /// Where.
    pub location: Location,
    /// What.
    pub kind: ErrorKind,
}

impl Error {
    /// An error at `location`.
    pub fn new(location: Location, kind: ErrorKind) -> Self {
        Self { location, kind }
    }

    pub(crate) fn malformed(location: Location, what: impl fmt::Display) -> Self {
        Self::new(location, ErrorKind::Malformed(what.to_string()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        match &self.kind {
            ErrorKind::Io(e) => write!(f, "{e}"),
            ErrorKind::Empty => f.write_str("empty file"),
            ErrorKind::NotElf => f.write_str("not an ELF file or archive"),
            ErrorKind::UnsupportedArchitecture(a) => write!(
                f,
                "unsupported architecture {a}: alt-tablegen reads x86-64 ELF files"
            ),
            ErrorKind::Malformed(w) => write!(f, "malformed ELF: {w}"),
            ErrorKind::MissingRelocations => f.write_str(
                "final binary has no relocation sections for its executable sections; \
                 link it with -Wl,--emit-relocs (ld --emit-relocs / -q) so they are kept",
            ),
            ErrorKind::NotRelocatable => f.write_str(
                "this is a final binary; a table object can only be emitted for relocatable \
                 objects (.o, .a, .rlib) that are linked together with it",
            ),
            ErrorKind::NotLinked => {
                f.write_str("this is a relocatable object; inspect a linked binary instead")
            }
            ErrorKind::Unanchorable(w) => write!(f, "{w}"),
            ErrorKind::Other(w) => f.write_str(w),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What kind of ELF file an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// `ET_REL`: a `.o`, or a member of an archive.
    Relocatable,
    /// `ET_EXEC`: a position-dependent executable or kernel image.
    Executable,
    /// `ET_DYN`: a PIE executable or shared object.
    SharedObject,
}

impl ObjectKind {
    /// Whether the file is linked (addresses are virtual addresses, relocation offsets too).
    pub fn is_final(self) -> bool {
        self != Self::Relocatable
    }
}

/// An input file, mapped into memory.
#[derive(Debug)]
pub struct Input {
    path: PathBuf,
    map: Option<Mmap>,
}

impl Input {
    /// Opens and maps `path`. An empty file is an error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let io_err = |e| Error::new(Location::file(&path), ErrorKind::Io(e));
        let file = fs::File::open(&path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            return Err(Error::new(Location::file(&path), ErrorKind::Empty));
        }
        // SAFETY: the map is read-only and private. If another process truncates or rewrites
        // the file while it is mapped, reads may see the new bytes or fault (SIGBUS); this is
        // the usual contract of tools that map their inputs (linkers, objdump), and inputs here
        // are build artefacts nobody changes while the tool runs.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Ok(Self {
            path,
            map: Some(map),
        })
    }

    /// The path given to [`Input::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes.
    pub fn data(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The ELF objects in the file: the file itself, or the ELF members of an archive.
    /// x86-64 only.
    pub fn objects(&self) -> Result<Vec<Object<'_>>, Error> {
        objects(&self.path, self.data())
    }

    /// [`Input::objects`] for the instruction sets in `accepted` (`plan` and `apply` read
    /// AArch64 images too; scanning and emitting are x86-64 only).
    pub fn objects_for(&self, accepted: &[Machine]) -> Result<Vec<Object<'_>>, Error> {
        objects_for(&self.path, self.data(), accepted)
    }
}

/// The instruction set of an ELF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Machine {
    /// `EM_X86_64`.
    X86_64,
    /// `EM_AARCH64`.
    Aarch64,
}

impl Machine {
    /// `x86-64` or `AArch64`.
    pub fn name(self) -> &'static str {
        match self {
            Machine::X86_64 => "x86-64",
            Machine::Aarch64 => "AArch64",
        }
    }

    fn from_e_machine(m: u16) -> Option<Self> {
        match m {
            elf::EM_X86_64 => Some(Machine::X86_64),
            elf::EM_AARCH64 => Some(Machine::Aarch64),
            _ => None,
        }
    }
}

/// An ELF x86-64 object: a whole file, or one member of an archive.
#[derive(Debug)]
pub struct Object<'d> {
    /// The file it came from.
    pub file: &'d Path,
    /// The archive member name, if it came from an archive.
    pub member: Option<String>,
    /// Its bytes.
    pub data: &'d [u8],
    /// Its ELF type.
    pub kind: ObjectKind,
    /// Its instruction set.
    pub machine: Machine,
    pub(crate) header: &'d Elf64,
    pub(crate) sections: SectionTable<'d, Elf64>,
    pub(crate) symbols: SymbolTable<'d, Elf64>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// The ELF objects in `data` (the contents of `file`): the file itself if it is an ELF file,
/// or every ELF member of an archive (other members, such as rlib metadata, are skipped).
pub fn objects<'d>(file: &'d Path, data: &'d [u8]) -> Result<Vec<Object<'d>>, Error> {
    objects_for(file, data, &[Machine::X86_64])
}

/// [`objects`] for the instruction sets in `accepted`.
pub fn objects_for<'d>(
    file: &'d Path,
    data: &'d [u8],
    accepted: &[Machine],
) -> Result<Vec<Object<'d>>, Error> {
    if data.is_empty() {
        return Err(Error::new(Location::file(file), ErrorKind::Empty));
    }
    if data.starts_with(b"!<arch>\n") || data.starts_with(b"!<thin>\n") {
        return archive_objects(file, data, accepted);
    }
    if !data.starts_with(ELF_MAGIC) {
        return Err(Error::new(Location::file(file), ErrorKind::NotElf));
    }
    Ok(vec![Object::parse_for(file, None, data, accepted)?])
}

fn archive_objects<'d>(
    file: &'d Path,
    data: &'d [u8],
    accepted: &[Machine],
) -> Result<Vec<Object<'d>>, Error> {
    let loc = Location::file(file);
    let archive = ArchiveFile::parse(data)
        .map_err(|e| Error::malformed(loc.clone(), format!("archive: {e}")))?;
    if archive.is_thin() || archive.kind() == ArchiveKind::Unknown && data.starts_with(b"!<thin>") {
        return Err(Error::new(
            loc,
            ErrorKind::Other("thin archives are not supported; pass the member files".into()),
        ));
    }
    let mut out = Vec::new();
    for member in archive.members() {
        let member =
            member.map_err(|e| Error::malformed(loc.clone(), format!("archive member: {e}")))?;
        let name = String::from_utf8_lossy(member.name()).into_owned();
        let mdata = member.data(data).map_err(|e| {
            let mut l = loc.clone();
            l.member = Some(name.clone());
            Error::malformed(l, format!("archive member data: {e}"))
        })?;
        if mdata.starts_with(ELF_MAGIC) {
            out.push(Object::parse_for(file, Some(name), mdata, accepted)?);
        }
    }
    Ok(out)
}

fn machine_name(machine: u16) -> &'static str {
    match machine {
        elf::EM_386 => "x86 (i386)",
        elf::EM_X86_64 => "x86-64",
        elf::EM_AARCH64 => "AArch64",
        elf::EM_ARM => "ARM",
        elf::EM_RISCV => "RISC-V",
        elf::EM_PPC => "PowerPC",
        elf::EM_PPC64 => "PowerPC64",
        elf::EM_S390 => "s390",
        elf::EM_MIPS => "MIPS",
        elf::EM_SPARCV9 => "SPARC V9",
        elf::EM_LOONGARCH => "LoongArch",
        _ => "unknown",
    }
}

impl<'d> Object<'d> {
    /// Parses one ELF file (or archive member) and checks that it is 64-bit little-endian
    /// x86-64.
    pub fn parse(file: &'d Path, member: Option<String>, data: &'d [u8]) -> Result<Self, Error> {
        Self::parse_for(file, member, data, &[Machine::X86_64])
    }

    /// [`Object::parse`] for 64-bit little-endian objects of the instruction sets in
    /// `accepted`.
    pub fn parse_for(
        file: &'d Path,
        member: Option<String>,
        data: &'d [u8],
        accepted: &[Machine],
    ) -> Result<Self, Error> {
        let loc = Location {
            file: file.to_path_buf(),
            member: member.clone(),
            ..Location::default()
        };
        if data.is_empty() {
            return Err(Error::new(loc, ErrorKind::Empty));
        }
        if !data.starts_with(ELF_MAGIC) {
            return Err(Error::new(loc, ErrorKind::NotElf));
        }
        if data.len() < 20 {
            return Err(Error::malformed(loc.at(0), "truncated ELF header"));
        }
        // e_ident[EI_CLASS] and e_ident[EI_DATA].
        let class = data[4];
        let little = data[5] == elf::ELFDATA2LSB;
        let machine = if little {
            u16::from_le_bytes([data[18], data[19]])
        } else {
            u16::from_be_bytes([data[18], data[19]])
        };
        let arch = Machine::from_e_machine(machine).filter(|m| accepted.contains(m));
        let Some(arch) = arch.filter(|_| class == elf::ELFCLASS64 && little) else {
            let bits = if class == elf::ELFCLASS64 { 64 } else { 32 };
            let order = if little {
                "little-endian"
            } else {
                "big-endian"
            };
            return Err(Error::new(
                loc,
                ErrorKind::UnsupportedArchitecture(format!(
                    "{} (e_machine {machine}, {bits}-bit {order})",
                    machine_name(machine)
                )),
            ));
        };
        let header = Elf64::parse(data)
            .map_err(|e| Error::malformed(loc.clone().at(0), format!("ELF header: {e}")))?;
        let kind = match header.e_type(LE) {
            elf::ET_REL => ObjectKind::Relocatable,
            elf::ET_EXEC => ObjectKind::Executable,
            elf::ET_DYN => ObjectKind::SharedObject,
            t => {
                return Err(Error::malformed(
                    loc,
                    format!("unsupported ELF file type {t} (expected ET_REL, ET_EXEC or ET_DYN)"),
                ))
            }
        };
        let sections = header.sections(LE, data).map_err(|e| {
            let off = header.e_shoff(LE);
            Error::malformed(loc.clone().at(off), format!("section headers: {e}"))
        })?;
        let symbols = sections
            .symbols(LE, data, elf::SHT_SYMTAB)
            .map_err(|e| Error::malformed(loc.clone().in_section(".symtab"), e))?;
        Ok(Self {
            file,
            member,
            data,
            kind,
            machine: arch,
            header,
            sections,
            symbols,
        })
    }

    /// A location in this object, without section.
    pub fn location(&self) -> Location {
        Location {
            file: self.file.to_path_buf(),
            member: self.member.clone(),
            ..Location::default()
        }
    }

    /// A location in section `index` of this object.
    pub fn section_location(&self, index: usize) -> Location {
        self.location().in_section(self.section_name(index))
    }

    /// The number of section headers (including the null section 0).
    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// The header of section `index`, if it exists.
    pub fn section_header(&self, index: usize) -> Option<&'d SectionHeader64> {
        self.sections.section(object::SectionIndex(index)).ok()
    }

    /// The name of section `index`; a placeholder such as `#5` if it has none or it is not
    /// readable.
    pub fn section_name(&self, index: usize) -> String {
        self.section_header(index)
            .and_then(|h| self.sections.section_name(LE, h).ok())
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_else(|| format!("#{index}"))
    }

    /// The contents of section `index` (empty for `SHT_NOBITS`), bounds-checked against the
    /// file.
    pub fn section_data(&self, index: usize) -> Result<&'d [u8], Error> {
        let h = self.section_header(index).ok_or_else(|| {
            Error::malformed(self.location(), format!("no section with index {index}"))
        })?;
        h.data(LE, self.data).map_err(|_| {
            Error::malformed(
                self.section_location(index),
                format!(
                    "section data at file offset {:#x} size {:#x} lies outside the file (size {:#x})",
                    h.sh_offset(LE),
                    h.sh_size(LE),
                    self.data.len()
                ),
            )
        })
    }

    /// Whether section `index` holds code (`SHF_EXECINSTR`).
    pub fn is_executable(&self, index: usize) -> bool {
        self.section_header(index)
            .is_some_and(|h| h.sh_flags(LE) & u64::from(elf::SHF_EXECINSTR) != 0)
    }

    /// Iterates `(index, header)` over every section.
    pub fn section_headers(&self) -> impl Iterator<Item = (usize, &'d SectionHeader64)> + '_ {
        self.sections.iter().enumerate()
    }

    /// The symbol table (`.symtab`); empty if there is none.
    pub fn symbols(&self) -> &[Sym64] {
        self.symbols.symbols()
    }

    /// The name of a symbol, or `None` if its name offset is out of bounds.
    pub fn symbol_name(&self, sym: &Sym64) -> Option<&'d [u8]> {
        self.symbols.symbol_name(LE, sym).ok()
    }

    /// The section index of the symbol table, so relocation sections can be matched to it.
    pub(crate) fn symtab_index(&self) -> usize {
        self.symbols.section().0
    }

    /// The ELF header.
    pub fn header(&self) -> &'d Elf64 {
        self.header
    }
}
