//! The signatures a patchable function may have, and how each value travels in registers.

use syn::spanned::Spanned;
use syn::{FnArg, Pat, ReturnType, Signature, Type};

/// How a value is carried across a site (System V x86-64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// An integer of this many bits.
    Int { bits: u8, signed: bool },
    /// `bool`: one byte, 0 or 1.
    Bool,
    /// A raw pointer, `usize` or `isize`: 64 bits.
    Word,
}

impl ValueKind {
    /// Classifies a type, or says why it is not allowed.
    pub fn of(ty: &Type) -> Result<Self, syn::Error> {
        let err = |msg: &str| Err(syn::Error::new(ty.span(), msg));
        match ty {
            Type::Ptr(_) => Ok(ValueKind::Word),
            Type::Path(p) if p.qself.is_none() => {
                let Some(ident) = p.path.get_ident() else {
                    return err(
                        "patchable functions (#[alternative], paravirt operations) take and return integers, `bool` or raw pointers; \
                         this type is not one of them",
                    );
                };
                let kind =
                    match ident.to_string().as_str() {
                        "u8" => ValueKind::Int {
                            bits: 8,
                            signed: false,
                        },
                        "i8" => ValueKind::Int {
                            bits: 8,
                            signed: true,
                        },
                        "u16" => ValueKind::Int {
                            bits: 16,
                            signed: false,
                        },
                        "i16" => ValueKind::Int {
                            bits: 16,
                            signed: true,
                        },
                        "u32" => ValueKind::Int {
                            bits: 32,
                            signed: false,
                        },
                        "i32" => ValueKind::Int {
                            bits: 32,
                            signed: true,
                        },
                        "u64" => ValueKind::Int {
                            bits: 64,
                            signed: false,
                        },
                        "i64" => ValueKind::Int {
                            bits: 64,
                            signed: true,
                        },
                        "usize" | "isize" => ValueKind::Word,
                        "bool" => ValueKind::Bool,
                        "f32" | "f64" => {
                            return err(
                                "floating-point values travel in vector registers; #[alternative] \
                             functions take and return integers, `bool` or raw pointers",
                            )
                        }
                        "u128" | "i128" => return err(
                            "128-bit integers take two registers; #[alternative] functions take \
                             and return integers of up to 64 bits, `bool` or raw pointers",
                        ),
                        _ => {
                            return err(
                                "patchable functions (#[alternative], paravirt operations) take and return integers, `bool` or raw \
                             pointers; pass structs and other types by raw pointer",
                            )
                        }
                    };
                Ok(kind)
            }
            Type::Reference(_) => err(
                "patchable functions (#[alternative], paravirt operations) take raw pointers, not references: \
                 use `*const T` / `*mut T` and wrap the function in a safe one",
            ),
            _ => err(
                "patchable functions (#[alternative], paravirt operations) take and return integers, `bool` or raw pointers; \
                 this type is not one of them",
            ),
        }
    }

    /// Bits the value occupies in its register.
    pub fn bits(self) -> u8 {
        match self {
            ValueKind::Int { bits, .. } => bits,
            ValueKind::Bool => 8,
            ValueKind::Word => 64,
        }
    }
}

/// One argument: its name, type and kind.
pub struct Arg {
    pub name: syn::Ident,
    pub ty: Type,
    pub kind: ValueKind,
}

/// A checked signature.
pub struct Checked {
    pub args: Vec<Arg>,
    /// The result, or `None` for `()`.
    pub ret: Option<(Type, ValueKind)>,
}

/// Most integer arguments passed in registers by the System V ABI.
pub const MAX_ARGS: usize = 6;

/// Checks that a signature can become a site.
pub fn check(sig: &Signature) -> Result<Checked, syn::Error> {
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span(),
            "#[alternative] functions cannot be `const`: they are patched at run time",
        ));
    }
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "#[alternative] functions cannot be `async`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "#[alternative] functions use the Rust ABI for callers; remove the `extern`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.params.span(),
            "#[alternative] functions cannot be generic: every site calls one fixed implementation",
        ));
    }
    if let Some(w) = &sig.generics.where_clause {
        return Err(syn::Error::new(
            w.span(),
            "#[alternative] functions cannot have a where clause",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "#[alternative] functions cannot be variadic",
        ));
    }
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "#[alternative] functions cannot take `self`; make it a free function",
                ))
            }
            FnArg::Typed(pt) => {
                let name = match &*pt.pat {
                    Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                        pi.ident.clone()
                    }
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "#[alternative] arguments must be plain names",
                        ))
                    }
                };
                if name == "ret" {
                    return Err(syn::Error::new(
                        name.span(),
                        "`ret` names the result in inline templates; rename this argument",
                    ));
                }
                let kind = ValueKind::of(&pt.ty)?;
                args.push(Arg {
                    name,
                    ty: (*pt.ty).clone(),
                    kind,
                });
            }
        }
    }
    if args.len() > MAX_ARGS {
        return Err(syn::Error::new(
            sig.inputs[MAX_ARGS].span(),
            "#[alternative] functions take at most 6 arguments (the System V argument registers)",
        ));
    }
    let ret = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => match &**ty {
            Type::Tuple(t) if t.elems.is_empty() => None,
            Type::Never(n) => {
                return Err(syn::Error::new(
                    n.span(),
                    "#[alternative] functions must return",
                ))
            }
            ty => Some(((*ty).clone(), ValueKind::of(ty)?)),
        },
    };
    Ok(Checked { args, ret })
}

/// System V argument registers, by width: 64, 32, 16, 8 bits.
pub const ARG_REGS: [[&str; 4]; MAX_ARGS] = [
    ["rdi", "edi", "di", "dil"],
    ["rsi", "esi", "si", "sil"],
    ["rdx", "edx", "dx", "dl"],
    ["rcx", "ecx", "cx", "cl"],
    ["r8", "r8d", "r8w", "r8b"],
    ["r9", "r9d", "r9w", "r9b"],
];

/// The result register, by width.
pub const RET_REGS: [&str; 4] = ["rax", "eax", "ax", "al"];

/// Caller-saved general-purpose registers a site may declare clobbered.
pub const CLOBBERABLE: [&str; 9] = ["rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"];

/// Index into a register row for a width in bits.
pub fn width_index(bits: u8) -> usize {
    match bits {
        64 => 0,
        32 => 1,
        16 => 2,
        _ => 3,
    }
}

/// Index for an asm template modifier (`r`, `e`, `x`, `l`), as Rust's `asm!` names them.
pub fn modifier_index(m: &str) -> Option<usize> {
    match m {
        "r" => Some(0),
        "e" => Some(1),
        "x" => Some(2),
        "l" => Some(3),
        _ => None,
    }
}

/// The general-purpose registers an `extern "C"` call may change (System V).
pub const C_ABI_GPRS: [&str; 9] = CLOBBERABLE;

/// The bit of a general-purpose register (any width: `rax`, `eax`, `ax`, `al`, `ah`, `r8d`...)
/// in [`alt_runtime::table::EffectsEntry::gprs`], by hardware number.
pub fn gpr_bit(name: &str) -> Option<u16> {
    let name = name.to_ascii_lowercase();
    let full = match name.as_str() {
        "rax" | "eax" | "ax" | "al" | "ah" => "rax",
        "rcx" | "ecx" | "cx" | "cl" | "ch" => "rcx",
        "rdx" | "edx" | "dx" | "dl" | "dh" => "rdx",
        "rbx" | "ebx" | "bx" | "bl" | "bh" => "rbx",
        "rsp" | "esp" | "sp" | "spl" => "rsp",
        "rbp" | "ebp" | "bp" | "bpl" => "rbp",
        "rsi" | "esi" | "si" | "sil" => "rsi",
        "rdi" | "edi" | "di" | "dil" => "rdi",
        n => {
            let num = n.strip_prefix('r')?;
            let digits = num.trim_end_matches(['d', 'w', 'b']);
            let i: u16 = digits.parse().ok()?;
            if !(8..16).contains(&i) || num.len() - digits.len() > 1 {
                return None;
            }
            return Some(1 << i);
        }
    };
    let i = alt_runtime::table::GPR_NAMES
        .iter()
        .position(|r| *r == full)?;
    Some(1 << i)
}
