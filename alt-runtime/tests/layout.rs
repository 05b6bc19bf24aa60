//! The runtime's modules depend on one another without cycles: each `use crate::...` (and each
//! `crate::path::Item` in code, outside comments and tests) is an edge from its file to the file
//! that defines the path; the graph must be acyclic, so that the layout reads as a pipeline
//! (identity -> errata -> cpu -> policy; isa -> plan -> patch -> driver -> process).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn files(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// The file that defines `a::b::c` (the longest prefix that is a file).
fn resolve(files: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| {
        let p = parts[..n].join("/");
        [format!("{p}.rs"), format!("{p}/mod.rs")]
            .into_iter()
            .find(|c| files.contains_key(c))
    })
}

/// Paths named after `crate::` in code: `use crate::{a, b::{c, d}}` flattened, and inline
/// `crate::x::Y` uses.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + 7..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let base = tail[..end].trim_end_matches(':').to_string();
        if tail[end..].starts_with('{') {
            let close = tail.find(';').unwrap_or(tail.len());
            for item in tail[end + 1..close].split([',', '{', '}']) {
                let item = item.trim().split(" as ").next().unwrap().trim();
                if !item.is_empty() {
                    out.push(format!("{base}::{item}"));
                }
            }
        }
        out.push(base);
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_runtime_has_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = BTreeMap::new();
    files(&root, &root, &mut all);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, src) in &all {
        let code: String = src
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for path in crate_paths(&code) {
            if let Some(target) = resolve(&all, &path) {
                if &target != file {
                    edges.entry(file.clone()).or_default().insert(target);
                }
            }
        }
    }
    assert!(edges.len() > 20, "the scan found the modules: {edges:?}");
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(cycle) = visit(n, &edges, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", cycle.join(" -> "));
            }
        }
    }
}
