//! The shape of the code: every module of `src` sits in a layer and imports only modules
//! that come before it in [`ORDER`] (`ARCHITECTURE.md` explains the layers). An import that
//! points upward (a feature importing `server`, the plumbing importing a feature, a feature
//! importing one listed after it) fails with the file, the line and the import.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The layers, lowest first; within a layer, a module may import only those listed before
/// it, so no two modules can import each other.
const ORDER: &[(&str, &[&str])] = &[
    ("settings", &["config"]),
    (
        "plumbing",
        &[
            "shutdown",
            "telemetry",
            "metrics",
            "db",
            "redis_conn",
            "mail",
        ],
    ),
    ("HTTP toolkit", &["error", "http"]),
    (
        "features",
        &[
            "compute",
            "auth",
            "audit",
            "jobs",
            "events",
            "idempotency",
            "log_filter",
            "users",
            "health",
            "webhooks",
            "accounts",
            "docs",
            "console",
        ],
    ),
    ("composition", &["server", "cli"]),
];

/// Files at the root of `src` that are not modules of the library's tree.
const ROOTS: [&str; 2] = ["lib.rs", "main.rs"];

/// Where `module` stands: its layer's name and its rank in the whole order.
fn rank(module: &str) -> Option<(&'static str, usize)> {
    ORDER
        .iter()
        .flat_map(|(layer, modules)| modules.iter().map(move |m| (*layer, *m)))
        .enumerate()
        .find(|(_, (_, m))| *m == module)
        .map(|(rank, (layer, _))| (layer, rank))
}

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file belongs to (`users` for `src/users/store.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a file under src")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Removes `//` comments (doc comments included), so that prose naming a module is not
/// taken for an import; string literals are kept as they are.
fn without_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| {
            let mut in_string = false;
            let bytes = line.as_bytes();
            for i in 0..bytes.len() {
                match bytes[i] {
                    b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
                    b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
                    _ => {}
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifier of `text`, if it starts with one.
fn identifier(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The top-level modules named by one `crate::{...}` group: the first segment of each
/// entry at depth one.
fn group_modules(group: &str) -> Vec<String> {
    let mut modules = Vec::new();
    let mut depth = 0usize;
    let mut entry_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                entry_start = true;
                continue;
            }
            c if c.is_whitespace() => continue,
            _ => {}
        }
        if entry_start && depth == 0 {
            if let Some(name) = identifier(&group[i..]) {
                if name != "self" {
                    modules.push(name.to_owned());
                }
            }
            entry_start = false;
        }
    }
    modules
}

/// Every top-level module `source` names through `crate::`, with the line it is named on.
fn imports(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let line_of = |offset: usize| source[..offset].matches('\n').count() + 1;
    for (offset, _) in source.match_indices("crate::") {
        let rest = &source[offset + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let end = group
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            for module in group_modules(&group[..end]) {
                found.push((line_of(offset), module));
            }
        } else if let Some(name) = identifier(rest) {
            found.push((line_of(offset), name.to_owned()));
        }
    }
    found
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if file.parent() == Some(src.as_path()) && ROOTS.contains(&name) {
            continue;
        }
        let module = module_of(&src, file);
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(file)
            .display()
            .to_string();
        let Some((layer, own)) = rank(&module) else {
            problems.push(format!(
                "src/{shown}: module `{module}` is in no layer; add it to ORDER in tests/architecture.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        seen.insert(module.clone());
        let source = without_comments(&fs::read_to_string(file).expect("readable"));
        for (line, target) in imports(&source) {
            if target == module {
                continue;
            }
            match rank(&target) {
                Some((_, theirs)) if theirs < own => {}
                Some((target_layer, _)) => problems.push(format!(
                    "src/{shown}:{line}: `{module}` ({layer}) imports `crate::{target}` ({target_layer}), which is not below it"
                )),
                None => problems.push(format!(
                    "src/{shown}:{line}: `{module}` imports `crate::{target}`, which is in no layer"
                )),
            }
        }
    }
    for (_, modules) in ORDER {
        for module in *modules {
            assert!(
                seen.contains(*module),
                "ORDER names `{module}`, which has no file under src: keep the list true"
            );
        }
    }
    assert!(
        problems.is_empty(),
        "imports that break the layering:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_import_reader_sees_grouped_nested_and_inline_paths() {
    let source = "use crate::{\n    auth::{Admin, Principal},\n    error::ApiError,\n    http::{self, extract::{A, B}},\n};\nfn f() { crate::server::run(); }\n// crate::cli is prose\n";
    let found: Vec<_> = imports(&without_comments(source))
        .into_iter()
        .map(|(line, module)| format!("{line}:{module}"))
        .collect();
    assert_eq!(found, ["1:auth", "1:error", "1:http", "6:server"]);
    assert_eq!(rank("server").map(|(layer, _)| layer), Some("composition"));
    assert!(rank("users") > rank("auth"));
}
