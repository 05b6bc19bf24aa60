//! Parsing the arguments of `#[alternative(...)]` and the replacement list of `alternative!`.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Path, Token};

use alt_runtime::table::{AltEntry, AltFlags};
use alt_runtime::Capability;

/// A capability key as written: `popcnt`, `!erratum_amd_div0`.
pub struct Key {
    pub negated: bool,
    pub capability: Capability,
}

impl Key {
    /// The `key` field of the table entry.
    pub fn encode(&self, direct_call: bool) -> u16 {
        let mut flags = AltFlags::empty();
        if self.negated {
            flags |= AltFlags::NOT;
        }
        if direct_call {
            flags |= AltFlags::DIRECT_CALL;
        }
        AltEntry::make_key(self.capability.id(), flags)
    }
}

impl Parse for Key {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let negated = input.peek(Token![!]);
        if negated {
            input.parse::<Token![!]>()?;
        }
        let name: Ident = input.call(syn::ext::IdentExt::parse_any)?;
        let capability = lookup(&name)?;
        Ok(Key {
            negated,
            capability,
        })
    }
}

/// Looks a capability up by the name written, or errors at it.
pub fn lookup(name: &Ident) -> syn::Result<Capability> {
    let text = name.to_string();
    Capability::from_name(&text).ok_or_else(|| {
        let mut known: Vec<&str> = Capability::all().map(|c| c.name()).collect();
        known.truncate(24);
        syn::Error::new(
            name.span(),
            format!(
                "unknown capability `{text}`; capabilities are CPU features such as {} and errata named erratum_*",
                known.join(", ")
            ),
        )
    })
}

/// What a replacement is.
pub enum Body {
    /// An inline instruction sequence: `inline("popcnt {ret}, {x}")`; several strings are lines.
    Inline(Vec<LitStr>),
    /// A function with the same signature, reached by a direct call.
    Function(Path),
}

/// One replacement: `key => body`.
pub struct Replacement {
    pub key: Key,
    pub body: Body,
}

/// One argument of the attribute.
pub enum AttrArg {
    Replacement(Replacement),
    /// `clobber(rcx, rdi)`: registers inline replacements may change.
    Clobber(Vec<Ident>),
    /// `clobber_abi`: the site declares every register a C call may change, no thunk.
    ClobberAbi(Span),
    /// `preserve_vectors`: thunks save the vector registers instead of the site declaring them
    /// clobbered.
    PreserveVectors(Span),
}

impl Parse for AttrArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Ident) && !input.peek2(Token![=>]) {
            let fork = input.fork();
            let word: Ident = fork.call(syn::ext::IdentExt::parse_any)?;
            if word == "clobber" && fork.peek(syn::token::Paren) {
                input.parse::<Ident>()?;
                let content;
                syn::parenthesized!(content in input);
                let regs = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                return Ok(AttrArg::Clobber(regs.into_iter().collect()));
            }
            if word == "clobber_abi" && (fork.is_empty() || fork.peek(Token![,])) {
                let w: Ident = input.parse()?;
                return Ok(AttrArg::ClobberAbi(w.span()));
            }
            if word == "preserve_vectors" && (fork.is_empty() || fork.peek(Token![,])) {
                let w: Ident = input.parse()?;
                return Ok(AttrArg::PreserveVectors(w.span()));
            }
        }
        let key: Key = input.parse()?;
        input.parse::<Token![=>]>()?;
        let body = if input.peek(Ident) && input.peek2(syn::token::Paren) {
            let fork = input.fork();
            let word: Ident = fork.parse()?;
            if word == "inline" {
                input.parse::<Ident>()?;
                let content;
                syn::parenthesized!(content in input);
                let lines = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
                if lines.is_empty() {
                    return Err(syn::Error::new(
                        word.span(),
                        "inline(...) needs at least one instruction string",
                    ));
                }
                Body::Inline(lines.into_iter().collect())
            } else {
                Body::Function(input.parse()?)
            }
        } else {
            Body::Function(input.parse()?)
        };
        Ok(AttrArg::Replacement(Replacement { key, body }))
    }
}

/// The whole attribute argument list.
pub struct AttrArgs {
    pub replacements: Vec<Replacement>,
    pub clobbers: Vec<Ident>,
    pub clobber_abi: Option<Span>,
    pub preserve_vectors: Option<Span>,
}

impl Parse for AttrArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let list = Punctuated::<AttrArg, Token![,]>::parse_terminated(input)?;
        let mut out = AttrArgs {
            replacements: Vec::new(),
            clobbers: Vec::new(),
            clobber_abi: None,
            preserve_vectors: None,
        };
        for arg in list {
            match arg {
                AttrArg::Replacement(r) => out.replacements.push(r),
                AttrArg::Clobber(c) => out.clobbers.extend(c),
                AttrArg::ClobberAbi(s) => out.clobber_abi = Some(s),
                AttrArg::PreserveVectors(s) => out.preserve_vectors = Some(s),
            }
        }
        Ok(out)
    }
}
