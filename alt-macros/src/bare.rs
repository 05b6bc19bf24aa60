//! `alternative!`: bare instruction swaps.
//!
//! The expansion is an `asm!` invocation, so it must be written inside `unsafe` as `asm!` is:
//! that `unsafe` block is the user's acknowledgement of the templates, and the `unsafe_code`
//! lint sees it. What the operands and options declare is recorded for `alt-tablegen verify`.

use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitStr, Token};

use alt_runtime::table::Effects;

use crate::args::{peek_key, Key};
use crate::certain;
use crate::sig::{gpr_bit, C_ABI_GPRS};
use crate::site::{Declared, DefaultCode, EntrySpec, EntryTarget, SiteSpec};

/// `"default", key => "replacement", ..., asm operands and options`.
pub struct BareInput {
    default: LitStr,
    replacements: Vec<(Key, LitStr)>,
    /// Operands, in the order written.
    operands: Vec<TokenStream2>,
    /// `options(...)` and `clobber_abi(...)`, which `asm!` wants last.
    trailing: Vec<TokenStream2>,
}

impl Parse for BareInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let default: LitStr = input.parse()?;
        let mut replacements = Vec::new();
        let mut operands = Vec::new();
        let mut trailing = Vec::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            if operands.is_empty() && trailing.is_empty() && peek_key(input) {
                let key: Key = input.parse()?;
                input.parse::<Token![=>]>()?;
                let text: LitStr = input.parse()?;
                replacements.push((key, text));
                continue;
            }
            // One asm! argument: tokens up to the next top-level comma.
            let mut item = TokenStream2::new();
            while !input.is_empty() && !input.peek(Token![,]) {
                let tt: TokenTree = input.parse()?;
                item.extend(std::iter::once(tt));
            }
            let first = item.clone().into_iter().next().map(|t| t.to_string());
            match first.as_deref() {
                Some("options") | Some("clobber_abi") => trailing.push(item),
                _ => operands.push(item),
            }
        }
        if replacements.is_empty() {
            return Err(syn::Error::new(
                default.span(),
                "alternative! needs at least one replacement after the default: \
                 alternative!(\"\", lfence_serializing => \"lfence\")",
            ));
        }
        Ok(BareInput {
            default,
            replacements,
            operands,
            trailing,
        })
    }
}

fn lines(s: &LitStr) -> Vec<String> {
    s.value()
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// What one `asm!` operand declares: `[name =] dir(class) expr`.
fn declare_operand(tokens: &TokenStream2, position: usize, d: &mut Declared, fx: &mut Effects) {
    let tts: Vec<TokenTree> = tokens.clone().into_iter().collect();
    // `name = ...`: the template names it `{name}`; otherwise `{position}`.
    let (name, rest) = match (tts.first(), tts.get(1)) {
        (Some(TokenTree::Ident(n)), Some(TokenTree::Punct(p)))
            if p.as_char() == '=' && tts.get(2).is_some_and(|t| !is_punct(t, '=')) =>
        {
            (n.to_string(), &tts[2..])
        }
        _ => (position.to_string(), &tts[..]),
    };
    let (Some(TokenTree::Ident(dir)), Some(TokenTree::Group(class))) = (rest.first(), rest.get(1))
    else {
        return;
    };
    let writes = matches!(
        dir.to_string().as_str(),
        "out" | "lateout" | "inout" | "inlateout"
    );
    if !writes {
        return;
    }
    let class = class.stream().to_string();
    let class = class.trim();
    if let Some(reg) = class.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        // An explicit register: known now.
        match gpr_bit(reg) {
            Some(bit) => d.gprs |= bit,
            None => *fx |= Effects::VECTORS,
        }
        return;
    }
    match class {
        "reg" | "reg_abcd" => d.probes.push(format!("{{{name}:r}}")),
        "reg_byte" => d.probes.push(format!("{{{name}}}")),
        // xmm_reg, ymm_reg, zmm_reg, kreg, x87/mmx: the vector registers, coarsely.
        _ => *fx |= Effects::VECTORS,
    }
}

fn is_punct(t: &TokenTree, c: char) -> bool {
    matches!(t, TokenTree::Punct(p) if p.as_char() == c)
}

/// What the trailing `options(...)` and `clobber_abi(...)` declare.
fn declare_trailing(tokens: &TokenStream2, d: &mut Declared, fx: &mut Effects) {
    let tts: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let (Some(TokenTree::Ident(kw)), Some(TokenTree::Group(g))) = (tts.first(), tts.get(1)) else {
        return;
    };
    if kw == "clobber_abi" {
        for r in C_ABI_GPRS {
            d.gprs |= gpr_bit(r).unwrap_or(0);
        }
        *fx |= Effects::VECTORS;
        return;
    }
    for opt in g.stream() {
        if let TokenTree::Ident(o) = opt {
            match o.to_string().as_str() {
                "nomem" => fx.remove(Effects::MEMORY_READ | Effects::MEMORY_WRITE),
                "readonly" => fx.remove(Effects::MEMORY_WRITE),
                "nostack" => fx.remove(Effects::STACK),
                "preserves_flags" => fx.remove(Effects::FLAGS),
                _ => {}
            }
        }
    }
}

/// Expands to an `asm!` invocation (to be used inside `unsafe`). Where the build's target
/// features guarantee a replacement ([`crate::certain`]), one `asm!` per class of builds under
/// `cfg`: the first replacement guaranteed is the whole block (no site, nothing to patch); a
/// later one keeps a site with the replacements up to it. (Not for `options(noreturn)` blocks,
/// whose value the `cfg` selection could not pass on.)
pub fn expand(input: BareInput) -> syn::Result<TokenStream2> {
    let keys: Vec<&Key> = input.replacements.iter().map(|(k, _)| k).collect();
    let arms = certain::arms(&keys);
    let noreturn = input
        .trailing
        .iter()
        .any(|t| t.to_string().contains("noreturn"));
    if arms.len() == 1 || noreturn {
        return Ok(site(&input, input.replacements.len()));
    }
    let value = Ident::new("__alt_asm", Span::mixed_site());
    let mut out = TokenStream2::new();
    for arm in &arms {
        let asm = match arm.first {
            Some(0) => direct(&input, 0),
            Some(i) => site(&input, i + 1),
            None => site(&input, input.replacements.len()),
        };
        let cfg = &arm.cfg;
        out.extend(quote! {
            #[cfg(#cfg)]
            let #value = #asm;
        });
    }
    Ok(quote!({
        #out
        #value
    }))
}

/// The sequences left out of an `asm!` block, inside `.if 0`: never assembled, but they keep
/// every operand used, as in the site.
fn unassembled<'a>(texts: impl Iterator<Item = &'a LitStr>) -> Vec<String> {
    let mut out = vec![".if 0".to_string()];
    for t in texts {
        out.extend(lines(t));
    }
    out.push(".endif".to_string());
    out
}

/// The block when the build guarantees replacement `i`, the first: that sequence alone.
fn direct(input: &BareInput, i: usize) -> TokenStream2 {
    let mut text = lines(&input.replacements[i].1);
    let others = input
        .replacements
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, (_, t))| t);
    text.extend(unassembled(std::iter::once(&input.default).chain(others)));
    let operands = &input.operands;
    let trailing = &input.trailing;
    quote! {
        ::core::arch::asm!(
            #(#text,)*
            #(#operands,)*
            #(#trailing,)*
        )
    }
}

/// The site with the first `n` replacements.
fn site(input: &BareInput, n: usize) -> TokenStream2 {
    let mut statics = Vec::new();
    let mut named = Vec::new();
    let mut entries = Vec::new();
    for (i, (key, text)) in input.replacements[..n].iter().enumerate() {
        let st = format_ident!("__ALT_VARIANT_{}", i);
        let op = format_ident!("alt_v{}", i);
        let name = text.value().trim().to_string();
        let name = if name.is_empty() {
            String::from("(nothing)")
        } else {
            name
        };
        statics.push(quote!(static #st: &str = #name;));
        named.push(quote!(#op = sym #st));
        entries.push(EntrySpec {
            key: key.encode(false),
            target: EntryTarget::Inline(lines(text)),
            name_operand: Some(op.to_string()),
        });
    }
    named.push(quote!(alt_sname = sym __ALT_SITE_NAME));

    let mut declared = Declared::default();
    let mut fx = Effects::FLAGS | Effects::MEMORY_READ | Effects::MEMORY_WRITE | Effects::STACK;
    for (position, op) in input.operands.iter().enumerate() {
        declare_operand(op, position, &mut declared, &mut fx);
    }
    for t in &input.trailing {
        declare_trailing(t, &mut declared, &mut fx);
    }
    declared.effects = fx.bits();

    let mut lines = crate::site::template(&SiteSpec {
        default: DefaultCode::Inline(lines(&input.default)),
        entries,
        name_operand: Some("alt_sname".into()),
        effects: declared,
    });
    if n < input.replacements.len() {
        lines.extend(unassembled(input.replacements[n..].iter().map(|(_, t)| t)));
    }
    let operands = &input.operands;
    let trailing = &input.trailing;
    quote! {{
        static __ALT_SITE_NAME: &str = concat!(module_path!(), ":", line!());
        #(#statics)*
        ::core::arch::asm!(
            #(#lines,)*
            #(#operands,)*
            #(#named,)*
            #(#trailing,)*
        )
    }}
}
