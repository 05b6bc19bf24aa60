//! Substituting argument names in inline replacement templates.
//!
//! An inline replacement names the function's arguments and its result: `{x}`, `{ret}`, with
//! an optional width modifier as in `asm!` (`{x:e}` for the 32-bit register). Because the site's
//! operands live in fixed registers (the System V argument registers and `rax`), the macro
//! replaces each name by its register itself; the text handed to `asm!` then has no operands
//! of its own. `{{` and `}}` stand for literal braces.

use proc_macro2::Span;

use crate::sig::{modifier_index, width_index, Checked, ARG_REGS, RET_REGS};

/// Substitutes `{name}` / `{name:mod}` in one template line. Errors point at the literal.
pub fn substitute(line: &str, span: Span, sig: &Checked) -> syn::Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push_str("{{");
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push_str("}}");
            }
            '}' => {
                return Err(syn::Error::new(
                    span,
                    "unmatched `}` in template; write `}}` for a literal brace",
                ))
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(syn::Error::new(
                                span,
                                "unclosed `{` in template; write `{{` for a literal brace",
                            ))
                        }
                    }
                }
                out.push_str(&register(&name, span, sig)?);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn register(placeholder: &str, span: Span, sig: &Checked) -> syn::Result<String> {
    let (name, modifier) = match placeholder.split_once(':') {
        Some((n, m)) => (n.trim(), Some(m.trim())),
        None => (placeholder.trim(), None),
    };
    let (row, bits): (&[&str; 4], u8) = if name == "ret" {
        match &sig.ret {
            Some((_, kind)) => (&RET_REGS, kind.bits()),
            None => {
                return Err(syn::Error::new(
                    span,
                    "`{ret}` names the result, but this function returns nothing",
                ))
            }
        }
    } else {
        match sig.args.iter().position(|a| a.name == name) {
            Some(i) => (&ARG_REGS[i], sig.args[i].kind.bits()),
            None => {
                let names: Vec<String> = sig.args.iter().map(|a| a.name.to_string()).collect();
                return Err(syn::Error::new(
                    span,
                    format!(
                        "`{{{name}}}` names no argument; the template may use {} and `{{ret}}`",
                        if names.is_empty() {
                            String::from("no arguments")
                        } else {
                            names
                                .iter()
                                .map(|n| format!("`{{{n}}}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
        }
    };
    let index = match modifier {
        None => width_index(bits),
        Some(m) => modifier_index(m).ok_or_else(|| {
            syn::Error::new(
                span,
                format!("unknown register modifier `{m}`; use r (64), e (32), x (16) or l (8)"),
            )
        })?,
    };
    Ok(row[index].to_string())
}
