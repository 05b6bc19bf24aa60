//! `paravirt_ops!`: an operations table, its call sites, backends and the runtime descriptor.
//!
//! ```text
//! paravirt_ops! {
//!     /// docs
//!     [#[alt(crate = path)]]                     // optional: the facade's path, default ::alt
//!     pub table PV_OPS [: PvOps] {
//!         /// docs
//!         [unsafe] fn op(args) [-> ret] {
//!             native: path,                      // required: the native implementation
//!             unsafe inline: ["insn {ret}, {arg}", ..], // optional: native inline sequence
//!             clobbers: [rax, rdx] | C,          // optional, default C
//!             symbols: { name = path, .. },      // optional: `{name}` in inline lines
//!         }
//!     }
//! }
//! ```
//!
//! Generated, for table `NAME` of type `T`:
//! - `#[repr(C)] struct TSlots` (one `unsafe extern "C" fn` per operation), `#[repr(transparent)]
//!   struct T(OpsCell<TSlots>)` and `#[no_mangle] static NAME: T`;
//! - on `T`: one `#[inline(always)]` method per operation (the call site), `OPS`, `OP_<OP>`
//!   indices, `op_descs()`, `descriptor()`, and (hosted) `install()`;
//! - `TBackend`: a name and one `OpImpl` per operation, `NATIVE`, `unset()`, `choices()`;
//! - a hidden module `__alt_pv_NAME` with the native `extern "C"` shims, register-saving thunks,
//!   dispatch slots, the inline sequences (in `alt_replacement`) and the entry-section bounds,
//!   all named `__alt_*` / `__ALT_*` so that they never shadow the user's items, which the
//!   module sees through `use super::*`.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{braced, bracketed, Attribute, Ident, LitStr, Path, Signature, Token, Visibility};

use alt_runtime::linker::{ALT_REPLACEMENT_PUSHSECTION, PV_SECTION_FLAGS};
use alt_runtime::table::{Clobbers, Effects, EffectsKind, PV_SECTION_PREFIX};

use crate::args::INLINE_NEEDS_UNSAFE;
use crate::sig::{self, gpr_bit, CLOBBERABLE};
use crate::site::effects_record;
use crate::{facade, register_operands, template, thunk_items_with, RegisterOperands};

/// Names the macro generates on the table type; operations may not use them.
const RESERVED: [&str; 4] = ["op_descs", "descriptor", "install", "install_with"];

/// The whole input.
pub struct TableInput {
    attrs: Vec<Attribute>,
    /// `#[alt(crate = path)]`.
    krate: Option<Path>,
    vis: Visibility,
    name: Ident,
    ty: Option<Ident>,
    ops: Vec<OpInput>,
}

enum ClobberSpec {
    C,
    Regs(Vec<Ident>),
}

struct OpInput {
    attrs: Vec<Attribute>,
    sig: Signature,
    native: Path,
    inline: Vec<LitStr>,
    /// The `unsafe` of `unsafe inline: [...]`.
    inline_unsafety: Option<proc_macro2::Span>,
    clobbers: ClobberSpec,
    symbols: Vec<(Ident, Path)>,
}

impl Parse for TableInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut attrs = input.call(Attribute::parse_outer)?;
        let mut krate = None;
        let mut kept = Vec::new();
        for a in attrs.drain(..) {
            if a.path().is_ident("alt") {
                a.parse_nested_meta(|m| {
                    if m.path.is_ident("crate") {
                        krate = Some(m.value()?.parse::<Path>()?);
                        Ok(())
                    } else {
                        Err(m.error("expected `#[alt(crate = path::to::alt)]`"))
                    }
                })?;
            } else {
                kept.push(a);
            }
        }
        let attrs = kept;
        let vis: Visibility = input.parse()?;
        let kw: Ident = input.parse()?;
        if kw != "table" {
            return Err(syn::Error::new(
                kw.span(),
                "expected `table NAME { ... }`, e.g. `pub table PV_OPS { fn cycles() -> u64 { native: native_cycles } }`",
            ));
        }
        let name: Ident = input.parse()?;
        let ty = if input.peek(Token![:]) {
            input.parse::<Token![:]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        let content;
        braced!(content in input);
        let mut ops = Vec::new();
        while !content.is_empty() {
            ops.push(content.parse()?);
        }
        if !input.is_empty() {
            return Err(input.error("one table per paravirt_ops! invocation"));
        }
        Ok(TableInput {
            attrs,
            krate,
            vis,
            name,
            ty,
            ops,
        })
    }
}

impl Parse for OpInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let sig: Signature = input.parse()?;
        let content;
        let brace = braced!(content in input);
        let mut native = None;
        let mut inline = Vec::new();
        let mut inline_unsafety = None;
        let mut clobbers = ClobberSpec::C;
        let mut symbols = Vec::new();
        while !content.is_empty() {
            let unsafety = if content.peek(Token![unsafe]) {
                Some(content.parse::<Token![unsafe]>()?.span)
            } else {
                None
            };
            let key: Ident = content.parse()?;
            content.parse::<Token![:]>()?;
            if unsafety.is_some() && key != "inline" {
                return Err(syn::Error::new(
                    key.span(),
                    "`unsafe` acknowledges an inline sequence only: `unsafe inline: [\"...\"]`",
                ));
            }
            match key.to_string().as_str() {
                "native" => native = Some(content.parse::<Path>()?),
                "inline" => {
                    let lines;
                    bracketed!(lines in content);
                    let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&lines)?;
                    if list.is_empty() {
                        return Err(syn::Error::new(
                            key.span(),
                            "inline: [...] needs at least one instruction string",
                        ));
                    }
                    let Some(u) = unsafety else {
                        return Err(syn::Error::new(
                            key.span(),
                            INLINE_NEEDS_UNSAFE.replace("unsafe inline(...)", "unsafe inline: [...]"),
                        ));
                    };
                    inline_unsafety = Some(u);
                    inline = list.into_iter().collect();
                }
                "clobbers" => {
                    if content.peek(syn::token::Bracket) {
                        let regs;
                        bracketed!(regs in content);
                        let list = Punctuated::<Ident, Token![,]>::parse_terminated(&regs)?;
                        for r in &list {
                            if !CLOBBERABLE.contains(&r.to_string().as_str()) {
                                return Err(syn::Error::new(
                                    r.span(),
                                    format!(
                                        "`{r}` cannot be clobbered; an operation may clobber the caller-saved registers {} (or write `clobbers: C`)",
                                        CLOBBERABLE.join(", ")
                                    ),
                                ));
                            }
                        }
                        clobbers = ClobberSpec::Regs(list.into_iter().collect());
                    } else {
                        let c: Ident = content.parse()?;
                        if c != "C" {
                            return Err(syn::Error::new(
                                c.span(),
                                "expected `clobbers: C` (everything a C call may change) or a register list such as `clobbers: [rax, rdx]`",
                            ));
                        }
                        clobbers = ClobberSpec::C;
                    }
                }
                "symbols" => {
                    let body;
                    braced!(body in content);
                    while !body.is_empty() {
                        let n: Ident = body.parse()?;
                        body.parse::<Token![=]>()?;
                        let p: Path = body.parse()?;
                        symbols.push((n, p));
                        if !body.is_empty() {
                            body.parse::<Token![,]>()?;
                        }
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown key `{other}`; an operation takes native, inline, clobbers and symbols"),
                    ))
                }
            }
            if !content.is_empty() {
                content.parse::<Token![,]>()?;
            }
        }
        let native = native.ok_or_else(|| {
            syn::Error::new(
                brace.span.join(),
                "every operation needs `native: path::to::function`",
            )
        })?;
        Ok(OpInput {
            attrs,
            sig,
            native,
            inline,
            inline_unsafety,
            clobbers,
            symbols,
        })
    }
}

/// `PV_OPS` -> `PvOps`.
fn camel(name: &str) -> String {
    name.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            let first = c.next().map(|f| f.to_ascii_uppercase());
            first
                .into_iter()
                .chain(c.flat_map(|x| x.to_lowercase()))
                .collect::<String>()
        })
        .collect()
}

const MARK: char = '\u{1}';

/// Inline lines with `{arg}`/`{ret}` replaced by registers and `{symbol}` by `sym` operands.
fn inline_text(op: &OpInput, checked: &sig::Checked) -> syn::Result<Vec<String>> {
    let mut out = Vec::new();
    for l in &op.inline {
        let mut text = l.value();
        for (n, _) in &op.symbols {
            text = text.replace(&format!("{{{n}}}"), &format!("{MARK}{n}{MARK}"));
        }
        let mut s = template::substitute(&text, l.span(), checked)?;
        for (n, _) in &op.symbols {
            s = s.replace(&format!("{MARK}{n}{MARK}"), &format!("{{alt_sym_{n}}}"));
        }
        out.push(s);
    }
    Ok(out)
}

fn symbol_operands(op: &OpInput) -> Vec<TokenStream2> {
    op.symbols
        .iter()
        .map(|(n, p)| {
            let o = format_ident!("alt_sym_{}", n);
            quote!(#o = sym #p)
        })
        .collect()
}

/// Expands `paravirt_ops!`.
pub fn expand(input: TableInput) -> syn::Result<TokenStream2> {
    let TableInput {
        attrs,
        krate,
        vis,
        name,
        ty,
        ops,
    } = input;
    let alt = facade(krate.as_ref());
    let private = quote!(#alt::__private);
    let name_str = name.to_string();
    if !name_str
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(syn::Error::new(
            name.span(),
            "the table name becomes a symbol and a section name: ASCII letters, digits and `_` only",
        ));
    }
    if ops.is_empty() {
        return Err(syn::Error::new(
            name.span(),
            "a table needs at least one operation",
        ));
    }
    if ops.len() > 256 {
        return Err(syn::Error::new(
            name.span(),
            "a table has at most 256 operations (the entry's op field is one byte)",
        ));
    }
    let ty = ty.unwrap_or_else(|| Ident::new(&camel(&name_str), name.span()));
    let slots_ty = format_ident!("{}Slots", ty);
    let backend_ty = format_ident!("{}Backend", ty);
    let hidden = format_ident!("__alt_pv_{}", name);
    let section = format!("{PV_SECTION_PREFIX}{name_str}");
    let pushsection = format!(".pushsection {section},{PV_SECTION_FLAGS}");
    let n_ops = ops.len();

    let mut slot_fields = Vec::new();
    let mut slot_inits = Vec::new();
    let mut hidden_items = Vec::new();
    let mut methods = Vec::new();
    let mut consts = Vec::new();
    let mut op_descs = Vec::new();
    let mut backend_fields = Vec::new();
    let mut backend_native = Vec::new();
    let mut backend_unset = Vec::new();
    let mut backend_choices = Vec::new();
    let mut op_names = Vec::new();

    for (index, op) in ops.iter().enumerate() {
        let checked = sig::check(&op.sig)?;
        let op_name = &op.sig.ident;
        let op_str = op_name.to_string();
        if RESERVED.contains(&op_str.as_str()) {
            return Err(syn::Error::new(
                op_name.span(),
                format!("`{op_str}` is a name the table type already uses; rename the operation"),
            ));
        }
        if op_names.contains(&op_str) {
            return Err(syn::Error::new(
                op_name.span(),
                format!("operation `{op_str}` is declared twice"),
            ));
        }
        op_names.push(op_str.clone());
        let op_u8 = index as u8;
        let arg_names: Vec<&Ident> = checked.args.iter().map(|a| &a.name).collect();
        let arg_types: Vec<&syn::Type> = checked.args.iter().map(|a| &a.ty).collect();
        let output = &op.sig.output;
        let fn_ty = quote!(unsafe extern "C" fn(#(#arg_types),*) #output);
        let op_attrs = &op.attrs;
        let unsafety = &op.sig.unsafety;
        let inputs = &op.sig.inputs;

        // Clobber set: declared registers plus rax (the result register), or the C ABI.
        let (clobber_bits, clobbered, c_abi): (u16, Vec<String>, bool) = match &op.clobbers {
            ClobberSpec::C => (Clobbers::C_ABI.bits(), Vec::new(), true),
            ClobberSpec::Regs(regs) => {
                let mut set = Clobbers::RAX;
                let mut names = Vec::new();
                for r in regs {
                    let s = r.to_string();
                    set |= match s.as_str() {
                        "rax" => Clobbers::RAX,
                        "rcx" => Clobbers::RCX,
                        "rdx" => Clobbers::RDX,
                        "rsi" => Clobbers::RSI,
                        "rdi" => Clobbers::RDI,
                        "r8" => Clobbers::R8,
                        "r9" => Clobbers::R9,
                        "r10" => Clobbers::R10,
                        _ => Clobbers::R11,
                    };
                    if !names.contains(&s) {
                        names.push(s);
                    }
                }
                (set.bits(), names, false)
            }
        };

        // The native shim.
        let native_fn = format_ident!("__alt_native_{}", op_name);
        let native_path = &op.native;
        // A safe operation's native function must be safe to call: its shim calls it without
        // `unsafe`. An `unsafe fn` operation's callers keep its contract.
        let native_call = quote!(#native_path(#(#arg_names),*));
        let native_call = if unsafety.is_some() {
            quote!(unsafe { #native_call })
        } else {
            native_call
        };
        hidden_items.push(quote! {
            #[allow(clippy::missing_safety_doc, clippy::too_many_arguments, unused_unsafe)]
            pub(super) extern "C" fn #native_fn(#(#arg_names: #arg_types),*) #output {
                #native_call
            }
        });

        // Thunks and the dispatch slot for operations that clobber less than a C call.
        let params: Vec<TokenStream2> = arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = format_ident!("_a{}", i);
                quote!(#p: #t)
            })
            .collect();
        let (initial, native_thunk, dispatch_thunk, dispatch_slot) = if c_abi {
            (
                quote!(#hidden::#native_fn),
                quote!(None),
                quote!(None),
                quote!(0),
            )
        } else {
            let nt = format_ident!("__alt_thunk_native_{}", op_name);
            let dt = format_ident!("__alt_thunk_dispatch_{}", op_name);
            let slot = format_ident!("__ALT_DISPATCH_{}", op_name);
            let native_path: Path = native_fn.clone().into();
            let slot_path: Path = slot.clone().into();
            hidden_items.push(thunk_items_with(
                &nt,
                &native_path,
                false,
                quote!(#(#params),*),
                quote!(#output),
                quote!(pub(super)),
            ));
            hidden_items.push(thunk_items_with(
                &dt,
                &slot_path,
                true,
                quote!(#(#params),*),
                quote!(#output),
                quote!(pub(super)),
            ));
            hidden_items.push(quote! {
                #[allow(non_upper_case_globals)]
                pub(super) static #slot: #private::OpsCell<#fn_ty> =
                    #private::OpsCell::new(#native_fn as #fn_ty);
            });
            (
                quote!(#hidden::#nt),
                quote!(Some(#hidden::#nt as *const () as usize as u64)),
                quote!(Some(#hidden::#dt as *const () as usize as u64)),
                quote!(#hidden::#slot.get() as usize as u64),
            )
        };
        slot_fields.push(quote!(pub #op_name: #fn_ty));
        slot_inits.push(quote!(#op_name: #initial as #fn_ty));

        // The native inline sequence, once, in the replacement section.
        let inline_lines = inline_text(op, &checked)?;
        let sym_ops = symbol_operands(op);
        let inline_desc = if inline_lines.is_empty() {
            quote!(None)
        } else {
            let f = format_ident!("__alt_inline_{}", op_name);
            // The asm only places the inline sequence in the replacement section and computes
            // the addresses of its bounds; the sequence itself is the user's unsafe code, so the
            // block carries their `unsafe` token.
            let place = quote! {
                ::core::arch::asm!(
                    #ALT_REPLACEMENT_PUSHSECTION,
                    "2:",
                    #(#inline_lines,)*
                    "3:",
                    ".popsection",
                    "lea {start}, [rip + 2b]",
                    "lea {end}, [rip + 3b]",
                    #(#sym_ops,)*
                    start = out(reg) start,
                    end = out(reg) end,
                    options(nomem, nostack, preserves_flags)
                );
            };
            let span = op
                .inline_unsafety
                .unwrap_or_else(proc_macro2::Span::call_site);
            let place_inline = quote_spanned!(span=> unsafe { #place });
            hidden_items.push(quote! {
                #[inline(never)]
                pub(super) fn #f() -> (u64, u8) {
                    let (start, end): (usize, usize);
                    #place_inline
                    (start as u64, (end - start) as u8)
                }
            });
            quote!(Some(#hidden::#f()))
        };
        let returns = checked.ret.is_some();
        op_descs.push(quote! {
            #private::OpDesc {
                name: #op_str,
                native: #hidden::#native_fn as *const () as usize as u64,
                native_thunk: #native_thunk,
                dispatch_thunk: #dispatch_thunk,
                dispatch_slot: #dispatch_slot,
                inline: #inline_desc,
                clobbers: #private::Clobbers::from_bits_retain(#clobber_bits),
                returns: #returns,
            }
        });

        // The call site.
        let mut lines: Vec<String> = Vec::new();
        if !inline_lines.is_empty() {
            lines.push(ALT_REPLACEMENT_PUSHSECTION.to_string());
            lines.push("2:".into());
            lines.extend(inline_lines.iter().cloned());
            lines.push("3:".into());
            lines.push(".popsection".into());
        }
        // Padding first, then the call through the slot: a thread inside the operation returns
        // to the site's end, a boundary in every variant (the runtime's return-address rule).
        lines.push("4:".into());
        if !inline_lines.is_empty() {
            let short = "((3b - 2b) - 6)";
            lines.push(format!(".skip -({short} > 0) * {short}, 0x90"));
        }
        lines.push(".byte 0xff, 0x15".into());
        lines.push(format!(".long {{alt_table}} + {} - . - 4", 8 * index));
        lines.push("5:".into());
        lines.push(pushsection.clone());
        lines.push(".balign 4".into());
        lines.push(".long 4b - .".into());
        lines.push(format!(".byte {op_u8}"));
        lines.push(".byte 5b - 4b".into());
        lines.push(format!(".short {clobber_bits:#06x}"));
        lines.push(".popsection".into());
        // What the site declares, for `alt-tablegen verify`, with the variants the alternative
        // tables do not name: the native inline sequence and the thunks backends are reached
        // through.
        let mut gprs = 0u16;
        for (flag, reg) in [
            (Clobbers::RAX, "rax"),
            (Clobbers::RCX, "rcx"),
            (Clobbers::RDX, "rdx"),
            (Clobbers::RSI, "rsi"),
            (Clobbers::RDI, "rdi"),
            (Clobbers::R8, "r8"),
            (Clobbers::R9, "r9"),
            (Clobbers::R10, "r10"),
            (Clobbers::R11, "r11"),
        ] {
            if Clobbers::from_bits_retain(clobber_bits).contains(flag) {
                gprs |= gpr_bit(reg).unwrap_or(0);
            }
        }
        let mut effects =
            Effects::FLAGS | Effects::MEMORY_READ | Effects::MEMORY_WRITE | Effects::STACK;
        if c_abi {
            effects |= Effects::VECTORS;
        }
        lines.extend(effects_record(
            "4b",
            EffectsKind::Declaration,
            gprs,
            effects.bits(),
            None,
        ));
        if !inline_lines.is_empty() {
            lines.extend(effects_record(
                "4b",
                EffectsKind::InlineVariant,
                0,
                0,
                Some(("2b", "3b - 2b")),
            ));
        }
        let mut thunk_ops = Vec::new();
        if !c_abi {
            let nt = format_ident!("__alt_thunk_native_{}", op_name);
            let dt = format_ident!("__alt_thunk_dispatch_{}", op_name);
            thunk_ops.push(quote!(alt_nthunk = sym #hidden::#nt));
            thunk_ops.push(quote!(alt_dthunk = sym #hidden::#dt));
            for t in ["{alt_nthunk}", "{alt_dthunk}"] {
                lines.extend(effects_record(
                    "4b",
                    EffectsKind::CallVariant,
                    0,
                    0,
                    Some((t, "0")),
                ));
            }
        }
        let RegisterOperands {
            regs,
            ret_decl,
            ret_out,
            ret_value,
        } = register_operands(&checked, &clobbered);
        let abi = if c_abi {
            quote!(clobber_abi("C"),)
        } else {
            quote!()
        };
        let site_sym_ops = symbol_operands(op);
        // The site calls through the table, whose slots always hold functions with this
        // operation's signature that change no more than the registers declared here
        // (register-saving thunks where the set is smaller than the C ABI); the runtime
        // rewrites it only with code that keeps that promise, or with the native inline
        // sequence, which is the user's unsafe code: then the block carries their `unsafe`.
        let asm = quote! {
            ::core::arch::asm!(
                #(#lines,)*
                alt_table = sym #name,
                #(#site_sym_ops,)*
                #(#thunk_ops,)*
                #(#regs,)*
                #ret_out,
                #abi
            );
        };
        let site_asm = match op.inline_unsafety {
            Some(span) => quote_spanned!(span=> #[allow(unused_unsafe)] unsafe { #asm }),
            None => quote!(#[allow(unused_unsafe)] unsafe { #asm }),
        };
        methods.push(quote! {
            #(#op_attrs)*
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            pub #unsafety fn #op_name(&self, #inputs) #output {
                #ret_decl
                #site_asm
                #ret_value
            }
        });

        let const_name = format_ident!("OP_{}", op_str.to_uppercase());
        let doc =
            format!("Index of `{op_str}` in the table (its slot is at byte offset 8 × index).");
        consts.push(quote! {
            #[doc = #doc]
            pub const #const_name: u8 = #op_u8;
        });
        let field_doc = format!("Implementation of `{op_str}`.");
        backend_fields.push(quote! {
            #[doc = #field_doc]
            pub #op_name: #private::OpImpl<#fn_ty>
        });
        backend_native.push(quote!(#op_name: #private::OpImpl::Native));
        backend_unset.push(quote!(#op_name: #private::OpImpl::Unset));
        backend_choices.push(quote! {
            match self.#op_name {
                #private::OpImpl::Native => #private::OpChoice::Native,
                #private::OpImpl::Function(f) => {
                    #private::OpChoice::Function(f as *const () as usize as u64)
                }
                #private::OpImpl::Nop => #private::OpChoice::Nop,
                #private::OpImpl::Unset => #private::OpChoice::Unset,
            }
        });
    }

    let start_sym = format!("__start_{section}");
    let stop_sym = format!("__stop_{section}");
    let hidden_start = format!(".hidden {start_sym}");
    let hidden_stop = format!(".hidden {stop_sym}");
    let lea_start = format!("lea {{start}}, [rip + {start_sym}]");
    let lea_stop = format!("lea {{stop}}, [rip + {stop_sym}]");
    let slots_doc = format!(
        "The slots of [`{name_str}`]: one `extern \"C\"` function pointer per operation, in \
         declaration order (C sees `struct {{ ... }} {name_str}` and calls `*{name_str}+8*op`)."
    );
    let backend_doc = format!(
        "A backend for [`{name_str}`]: one implementation per operation, chosen at start-up."
    );
    let table_doc = format!(
        "Type of the paravirt operations table [`{name_str}`]; each operation is a method \
         whose every call is a patchable site."
    );

    Ok(quote! {
        #[doc = #slots_doc]
        #[repr(C)]
        #[derive(Clone, Copy)]
        #vis struct #slots_ty {
            #(#slot_fields,)*
        }

        #[doc = #table_doc]
        #[repr(transparent)]
        #vis struct #ty(#private::OpsCell<#slots_ty>);

        #(#attrs)*
        #[unsafe(no_mangle)]
        #vis static #name: #ty = #ty(#private::OpsCell::new(#slots_ty {
            #(#slot_inits,)*
        }));

        #[doc(hidden)]
        #[allow(non_snake_case)]
        mod #hidden {
            #[allow(unused_imports)]
            use super::*;
            #(#hidden_items)*

            /// Bounds of the entry section, with a placeholder entry so they always exist.
            #[inline(never)]
            pub(super) fn __alt_entries() -> (u64, u64) {
                let (start, stop): (usize, usize);
                // SAFETY: the asm adds an all-zero placeholder entry and computes the
                // addresses of linker-defined symbols; it reads and writes no memory.
                unsafe {
                    ::core::arch::asm!(
                        #pushsection,
                        ".balign 4",
                        ".long 0, 0",
                        ".popsection",
                        #hidden_start,
                        #hidden_stop,
                        #lea_start,
                        #lea_stop,
                        start = out(reg) start,
                        stop = out(reg) stop,
                        options(nomem, nostack, preserves_flags)
                    );
                }
                (start as u64, stop as u64)
            }
        }

        #[allow(dead_code)]
        impl #ty {
            /// Number of operations.
            pub const OPS: usize = #n_ops;
            /// Names of the operations, in slot order.
            pub const OP_NAMES: [&'static str; #n_ops] = [#(#op_names),*];
            #(#consts)*

            /// The operations as the runtime sees them.
            pub fn op_descs(&self) -> [#private::OpDesc; #n_ops] {
                [#(#op_descs),*]
            }

            /// The table as the runtime sees it, with `ops` from [`Self::op_descs`].
            pub fn descriptor<'a>(
                &self,
                ops: &'a [#private::OpDesc],
            ) -> #private::TableDesc<'a> {
                let (start, stop) = #hidden::__alt_entries();
                #private::TableDesc {
                    name: #name_str,
                    table: self.0.get() as usize as u64,
                    ops,
                    entries: start..stop,
                }
            }

            #private::if_hosted! {
                /// Patches every call site of this table in this process for `backend` and
                /// stores the backend's functions in the table (hosted Linux). Refuses while
                /// the process has other threads; see `install_with`.
                ///
                /// # Safety
                ///
                /// Every function in `backend` must be sound to call wherever its operation
                /// is called.
                pub unsafe fn install(
                    &'static self,
                    backend: &#backend_ty,
                ) -> ::core::result::Result<
                    #private::PvPatched,
                    #private::PvPatchError,
                > {
                    // SAFETY: the caller's contract.
                    unsafe { self.install_with(backend, &#private::PatchOptions::new()) }
                }

                /// [`Self::install`] with options (`assume_blocking_threads_run_no_sites` for qemu-user).
                ///
                /// # Safety
                ///
                /// As for [`Self::install`], and the options' own contract.
                pub unsafe fn install_with(
                    &'static self,
                    backend: &#backend_ty,
                    options: &#private::PatchOptions,
                ) -> ::core::result::Result<
                    #private::PvPatched,
                    #private::PvPatchError,
                > {
                    let ops = self.op_descs();
                    let desc = self.descriptor(&ops);
                    let choices = backend.choices();
                    let backend = #private::Backend {
                        name: backend.name,
                        ops: &choices,
                    };
                    // SAFETY: the descriptor is generated for this live table; the caller
                    // vouches for the backend's functions.
                    unsafe { #private::patch_self_with(&desc, &backend, options) }
                }
            }

            #(#methods)*
        }

        #[doc = #backend_doc]
        #[derive(Clone, Copy, Debug)]
        #vis struct #backend_ty {
            /// Name, for reports.
            pub name: &'static str,
            #(#backend_fields,)*
        }

        #[allow(dead_code)]
        impl #backend_ty {
            /// Every operation native.
            pub const NATIVE: Self = Self {
                name: "native",
                #(#backend_native,)*
            };

            /// Every operation unset (calling any traps); set the ones you provide.
            pub const fn unset(name: &'static str) -> Self {
                Self {
                    name,
                    #(#backend_unset,)*
                }
            }

            /// The choices as the runtime sees them.
            pub fn choices(&self) -> [#private::OpChoice; #n_ops] {
                [#(#backend_choices),*]
            }
        }
    })
}
