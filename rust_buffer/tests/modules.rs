//! The crate's module graph has no circles: module `a` *uses* module `b` when the code of
//! `src/a.rs` (comments and its test module left out) names a `crate::b::` path. Every
//! `crate::` path must name a module, not a crate-root re-export, so that no dependency hides
//! behind `lib.rs`. `docs/rust_buffer.md` ("Module dependencies") draws the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a module file: its lines up to its test module, without comment lines.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("mod tests") {
            break;
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The names that follow `crate::` in `code`, in order.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(i, _)| {
            // `$crate::` (macros) and identifiers ending in "crate" are not crate paths.
            let before = code[..*i].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                .collect()
        })
        .collect()
}

/// The module graph of the crate in `src`; `Err` lists paths that do not name a module.
fn graph(src: &Path) -> Result<Graph, Vec<String>> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(src)
        .expect("src/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("a source file"))
        })
        .filter(|(name, _)| name != "lib")
        .collect();
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut g = Graph::new();
    let mut bad = Vec::new();
    for (name, text) in &files {
        let uses = g.entry(name.clone()).or_default();
        for target in crate_paths(&code(text)) {
            if modules.contains(&target) {
                if &target != name {
                    uses.insert(target);
                }
            } else {
                bad.push(format!(
                    "src/{name}.rs: `crate::{target}` is not a module path (name the module that \
                     defines it, one `use crate::module::...` per module)"
                ));
            }
        }
    }
    if bad.is_empty() {
        Ok(g)
    } else {
        Err(bad)
    }
}

/// A circle of `g` (its modules in order, the first repeated at the end), if it has one.
fn find_circle(g: &Graph) -> Option<Vec<String>> {
    // Depth-first search; 0 unvisited, 1 on the current path, 2 done.
    fn visit<'a>(
        g: &'a Graph,
        m: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(m, 1);
        path.push(m);
        for next in g.get(m).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == next).expect("on the path");
                    let mut circle: Vec<String> =
                        path[at..].iter().map(|s| s.to_string()).collect();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(g, next, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            let mut path = Vec::new();
            if let Some(c) = visit(g, m, &mut state, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

fn crate_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    graph(&src).unwrap_or_else(|bad| panic!("{}", bad.join("\n")))
}

#[test]
fn the_module_graph_has_no_circle() {
    let g = crate_graph();
    assert!(g.len() > 10, "found only {:?}", g.keys());
    if let Some(circle) = find_circle(&g) {
        panic!("module circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_store_and_the_file_formats_are_layered() {
    let g = crate_graph();
    let uses = |a: &str, b: &str| g[a].contains(b);
    // The write path knows nothing of files or of the indexes built on it.
    for upper in ["shared", "persist", "index", "window_index", "format"] {
        assert!(!uses("store", upper), "store uses {upper}");
    }
    // Both file formats build on the store and on `format`, never on each other.
    for format in ["persist", "shared"] {
        assert!(
            uses(format, "store") && uses(format, "format"),
            "{format}: {:?}",
            g[format]
        );
    }
    assert!(!uses("persist", "shared") && !uses("shared", "persist"));
    // The row types are plain data.
    assert!(
        g["rows"].iter().all(|m| m == "error"),
        "rows uses {:?}",
        g["rows"]
    );
}

#[test]
fn the_checker_finds_circles_and_foreign_paths() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_circle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    let circle = find_circle(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]));
    assert_eq!(circle.unwrap(), ["a", "b", "c", "a"]);
    let text = "use crate::x::Y;\n// crate::z::W\nfn f() -> crate::Y { $crate::q }\n\
                mod tests {\nuse crate::t;\n}";
    assert_eq!(crate_paths(&code(text)), ["x", "Y"]);
}
