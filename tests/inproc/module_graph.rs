//! The modules of `src/` import each other without a cycle: between top-level modules
//! (`crate::x` in any file of module `y` is an edge y → x) and between the files of each
//! module (`super::x` and `crate::m::x` inside module m). Read from the sources, test code
//! (`#[cfg(test)] mod tests`) excluded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without comments and its unit-test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Identifiers following `prefix` (`prefix{a, b}` gives both).
fn after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|s| ident(s.trim())).filter(|s: &String| !s.is_empty()));
        } else {
            let id: String = ident(rest);
            if !id.is_empty() {
                out.insert(id);
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            v.push(p);
        }
    }
    v
}

/// A cycle in `g`, if there is one (depth-first search).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].iter().cloned().chain([n.to_string()]).collect());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn top_level() -> Graph {
    let root = src();
    let tops: BTreeSet<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path().file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "lib" && n != "main")
        .collect();
    let mut g = Graph::new();
    for f in rust_files(&root) {
        let rel = f.strip_prefix(&root).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if !tops.contains(&top) {
            continue;
        }
        let deps: Vec<String> =
            after(&code(&f), "crate::").into_iter().filter(|d| d != &top && tops.contains(d)).collect();
        g.entry(top).or_default().extend(deps);
    }
    g
}

/// The files of module `m` (a directory) and which of their siblings each uses.
fn inside(m: &str) -> Graph {
    let dir = src().join(m);
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| e.path().file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "mod")
        .collect();
    let mut g = Graph::new();
    for f in &files {
        let c = code(&dir.join(format!("{f}.rs")));
        let mut used = after(&c, "super::");
        used.extend(after(&c, &format!("crate::{m}::")));
        g.insert(f.clone(), used.into_iter().filter(|u| u != f && files.contains(u)).collect());
    }
    g
}

#[test]
fn no_module_imports_itself_through_others() {
    let g = top_level();
    assert!(g.len() > 15 && g["runtime"].contains("pipeline"), "the graph was read: {g:?}");
    assert_eq!(cycle(&g), None, "top-level modules");
    let dirs: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dirs.len() > 8);
    for m in dirs {
        assert_eq!(cycle(&inside(&m)), None, "the files of {m}");
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: Graph = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(
        after("use super::{batcher, heal::Healer};\nsuper::x::y", "super::"),
        ["batcher", "heal", "x"].map(String::from).into()
    );
}
