//! The arrows between the workspace's crates that must never exist (docs/ARCHITECTURE.md),
//! checked against what the manifests declare (`cargo metadata`), so a new dependency that breaks
//! the layering fails here instead of in review.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

/// Each workspace package and the packages it depends on (normal, build and dev kinds apart).
struct Manifests {
    /// package → (dependency, kind) where kind is "normal", "dev" or "build".
    deps: BTreeMap<String, Vec<(String, String)>>,
}

impl Manifests {
    fn load() -> Self {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut deps = BTreeMap::new();
        for package in metadata["packages"].as_array().unwrap() {
            let name = package["name"].as_str().unwrap().to_owned();
            let list = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (d["name"].as_str().unwrap().to_owned(), kind)
                })
                .collect();
            deps.insert(name, list);
        }
        Self { deps }
    }

    /// The packages `package` depends on outside tests (normal and build dependencies).
    fn production_deps(&self, package: &str) -> Vec<&str> {
        self.deps
            .get(package)
            .unwrap_or_else(|| panic!("no workspace package {package}"))
            .iter()
            .filter(|(_, kind)| kind != "dev")
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The crates that ship in the `tgingest` binary (testkit, bench and botsim's tests do not).
const PRODUCTION: &[&str] = &[
    "processor",
    "component",
    "producer",
    "consumer",
    "botsim",
    "embedded-broker",
    "tgingest",
];

#[test]
fn the_processor_depends_on_nothing_that_does_io() {
    let manifests = Manifests::load();
    let allowed = ["serde", "serde_json", "sha2", "thiserror"];
    let deps = manifests.production_deps("processor");
    let extra: Vec<&&str> = deps.iter().filter(|d| !allowed.contains(d)).collect();
    assert!(
        extra.is_empty(),
        "the processor is pure (no I/O, no clock): it may depend only on {allowed:?}, found {extra:?}"
    );
}

#[test]
fn the_producer_and_the_consumer_never_depend_on_each_other() {
    let manifests = Manifests::load();
    assert!(!manifests.production_deps("producer").contains(&"consumer"));
    assert!(!manifests.production_deps("consumer").contains(&"producer"));
    let dev = |p: &str, d: &str| manifests.deps[p].iter().any(|(name, _)| name == d);
    assert!(!dev("producer", "consumer") && !dev("consumer", "producer"));
}

#[test]
fn no_library_depends_on_the_binary_crate() {
    let manifests = Manifests::load();
    for (package, deps) in &manifests.deps {
        assert!(
            !deps.iter().any(|(name, _)| name == "tgingest"),
            "{package} depends on the binary crate tgingest"
        );
    }
}

#[test]
fn no_production_crate_depends_on_testkit_or_bench_outside_its_tests() {
    let manifests = Manifests::load();
    for package in PRODUCTION {
        let deps = manifests.production_deps(package);
        for forbidden in ["testkit", "bench"] {
            assert!(
                !deps.contains(&forbidden),
                "{package} depends on the test-only crate {forbidden}"
            );
        }
    }
}

#[test]
fn the_component_contract_depends_on_no_other_workspace_crate() {
    let manifests = Manifests::load();
    let workspace: Vec<&String> = manifests.deps.keys().collect();
    let deps = manifests.production_deps("component");
    let inner: Vec<&&str> = deps
        .iter()
        .filter(|d| workspace.iter().any(|w| w.as_str() == **d))
        .collect();
    assert!(
        inner.is_empty(),
        "component is the leaf contract, found {inner:?}"
    );
}

/// The top-level modules of one crate's `src/` and, for each, the top-level modules of the same
/// crate it names through `crate::…` paths (in `use` items or inline).
fn module_references(
    src: &std::path::Path,
) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    files(src, &mut all);
    let mut references: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for path in all {
        let relative = path.strip_prefix(src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = references.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or("").to_owned())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                vec![rest[..end].to_owned()]
            };
            for name in names {
                if !name.is_empty() && name != module && name != "self" {
                    entry.insert(name);
                }
            }
        }
    }
    references
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let crates = [
        ".",
        "processor",
        "component",
        "producer",
        "consumer",
        "botsim",
        "testkit",
        "embedded-broker",
        "bench",
    ];
    let mut cycles = Vec::new();
    for krate in crates {
        let references = module_references(&root.join(krate).join("src"));
        for (module, names) in &references {
            for other in names {
                if module < other
                    && references
                        .get(other)
                        .is_some_and(|back| back.contains(module))
                {
                    cycles.push(format!("{krate}: {module} <-> {other}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:?}"
    );
}
