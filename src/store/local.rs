//! Models already on disk: GGUFs in the models dirs (flat, or in the Hugging Face layout that
//! downloads use), the Hugging Face cache, and Ollama's store. Found models are used in place.

use super::catalog;
use crate::gguf::split_paths;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// A writable models dir (EXO_MODELS_DIRS or the default).
    ModelsDir,
    /// EXO_MODELS_READ_ONLY_DIRS: never written.
    ReadOnlyDir,
    /// The Hugging Face cache (HF_HOME): used in place, never written.
    HfCache,
    /// Ollama's store (~/.ollama/models): used in place, never written.
    Ollama,
    /// Only the header, in a partial model: the whole file is on other nodes or the hub, and
    /// stages fetch their windows (a cluster coordinator that lacks the model).
    HeaderOnly,
}

impl Location {
    pub fn label(&self) -> &'static str {
        match self {
            Location::ModelsDir => "models dir",
            Location::ReadOnlyDir => "read-only dir",
            Location::HfCache => "HF cache",
            Location::Ollama => "Ollama store",
            Location::HeaderOnly => "header only",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LocalModel {
    /// What `exo run` accepts for it.
    pub name: String,
    /// The GGUF files (one, or a complete split set in order).
    pub paths: Vec<PathBuf>,
    pub size: u64,
    pub quant: Option<String>,
    pub location: Location,
    /// For Hugging Face layouts: the repository.
    pub repo: Option<String>,
}

impl LocalModel {
    pub fn first(&self) -> &Path {
        &self.paths[0]
    }
}

const QUANTS: &[&str] = &[
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_XS", "IQ4_NL",
    "Q2_K_L", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q3_K_XL", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q4_K_L", "Q5_0",
    "Q5_1", "Q5_K_S", "Q5_K_M", "Q5_K_L", "Q6_K_L", "Q6_K", "Q8_0", "BF16", "F16", "F32", "MXFP4", "TQ1_0", "TQ2_0",
];

/// The quantization a file name announces (`...-Q4_K_M.gguf` → `q4_k_m`).
pub fn quant_from_name(name: &str) -> Option<String> {
    let up = name.to_ascii_uppercase();
    let boundary = |c: Option<char>| c.is_none_or(|c| matches!(c, '-' | '.' | '_' | '/'));
    let mut best: Option<&str> = None;
    for q in QUANTS {
        let mut from = 0;
        while let Some(i) = up[from..].find(q) {
            let at = from + i;
            let before = up[..at].chars().last();
            let after = up[at + q.len()..].chars().next();
            if boundary(before) && boundary(after) && best.is_none_or(|b| q.len() > b.len()) {
                best = Some(q);
            }
            from = at + 1;
        }
    }
    best.map(|q| q.to_ascii_lowercase())
}

/// GGUF files under `dir` (and its subdirectories when `recursive`). Links are hostile until
/// checked: a linked file counts only when its target lies inside one of `allowed` (canonical
/// paths: the models dirs, and what EXO_LINK_TARGETS allows) and is a GGUF (its magic), so a
/// planted link to `/etc/passwd` or to a GGUF elsewhere is never listed nor served to peers; a
/// linked directory is entered only when it lies inside `dir`; a directory seen before (a link
/// loop) or [`MAX_DEPTH`] deep is skipped.
fn ggufs(dir: &Path, recursive: bool, allowed: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(root) = std::fs::canonicalize(dir) else { return out };
    let mut seen = std::collections::HashSet::new();
    walk(Walk { root: &root, recursive, allowed }, dir, 0, &mut seen, &mut out);
    out.sort();
    out
}

/// What a scan is allowed to enter and follow.
#[derive(Clone, Copy)]
struct Walk<'a> {
    root: &'a Path,
    recursive: bool,
    allowed: &'a [PathBuf],
}

/// Deepest directory a scan enters (the hub layout needs 3 or 4).
pub const MAX_DEPTH: usize = 16;

fn walk(w: Walk, dir: &Path, depth: usize, seen: &mut std::collections::HashSet<PathBuf>, out: &mut Vec<PathBuf>) {
    let (root, recursive) = (w.root, w.recursive);
    let Ok(canon) = std::fs::canonicalize(dir) else { return };
    if depth > MAX_DEPTH || !seen.insert(canon) {
        tracing::debug!(dir = %dir.display(), "skipped: a link loop or too deep");
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let is_gguf_name = p.extension().is_some_and(|x| x == "gguf");
        if ft.is_symlink() {
            // metadata follows the link; a loop of file links fails here (ELOOP) and is skipped
            let Ok(m) = std::fs::metadata(&p) else { continue };
            if m.is_dir() && recursive {
                if std::fs::canonicalize(&p).is_ok_and(|c| c.starts_with(root)) {
                    walk(w, &p, depth + 1, seen, out);
                }
            } else if m.is_file() && is_gguf_name {
                let inside = std::fs::canonicalize(&p).is_ok_and(|c| w.allowed.iter().any(|a| c.starts_with(a)));
                if !inside {
                    // a hint only for a GGUF (a planted link to /etc/passwd gets none)
                    if has_gguf_magic(&p) {
                        warn_once_outside(&p);
                    }
                } else if has_gguf_magic(&p) {
                    out.push(p);
                }
            }
        } else if ft.is_dir() {
            if recursive {
                walk(w, &p, depth + 1, seen, out);
            }
        } else if ft.is_file() && is_gguf_name {
            out.push(p);
        }
    }
}

/// Says once per link (scans run on every listing) why a linked GGUF is no model.
fn warn_once_outside(link: &Path) {
    static WARNED: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> = std::sync::Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.get_or_insert_with(Default::default).insert(link.to_path_buf()) {
        tracing::warn!(link = %link.display(), "not a model: the link points outside the models dirs; add its target's dir to EXO_LINK_TARGETS to use it");
    }
}

/// The file starts with `GGUF`.
fn has_gguf_magic(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"GGUF"
}

/// Groups files into models: single files, and split sets whose every member is present.
fn group(files: &[PathBuf]) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in files {
        match split_paths(f) {
            Some(set) if set.len() > 1 => {
                if set[0] == *f && set.iter().all(|p| p.is_file()) {
                    out.push(set);
                }
            }
            _ => out.push(vec![f.clone()]),
        }
    }
    out
}

fn size(paths: &[PathBuf]) -> u64 {
    paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// Flat GGUFs in a models dir (not recursive: the `hf/` subtree is scanned as a hub layout).
/// `allowed`: canonical dirs linked files may point into ([`ggufs`]).
pub fn scan_flat(dir: &Path, location: Location, allowed: &[PathBuf]) -> Vec<LocalModel> {
    group(&ggufs(dir, false, allowed))
        .into_iter()
        .filter_map(|paths| {
            let name = super::local_names::model_name(&paths[0])?;
            Some(LocalModel {
                // a file not named for its quantization: the one its header declares
                quant: quant_from_name(&name).or_else(|| header_quant(&paths[0])),
                name,
                size: size(&paths),
                location: location.clone(),
                repo: None,
                paths,
            })
        })
        .collect()
}

/// A Hugging Face cache layout (`models--ORG--REPO/snapshots/REV/...`).
pub fn scan_hub(root: &Path, location: Location, allowed: &[PathBuf]) -> Vec<LocalModel> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return out };
    let mut repos: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    repos.sort();
    for repo_dir in repos {
        let Some(folder) = repo_dir.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(rest) = folder.strip_prefix("models--") else { continue };
        let repo = rest.replacen("--", "/", 1);
        // the revision `main` points at, else every snapshot
        let snapshots = repo_dir.join("snapshots");
        let revs: Vec<PathBuf> = match std::fs::read_to_string(repo_dir.join("refs/main")) {
            Ok(rev) if snapshots.join(rev.trim()).is_dir() => vec![snapshots.join(rev.trim())],
            _ => std::fs::read_dir(&snapshots).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default(),
        };
        for rev in revs {
            for paths in group(&ggufs(&rev, true, allowed)) {
                let rel: Vec<String> =
                    paths.iter().map(|p| p.strip_prefix(&rev).unwrap_or(p).to_string_lossy().into_owned()).collect();
                let quant = quant_from_name(&rel[0]);
                let name = catalog_name(&repo, &rel).unwrap_or_else(|| match &quant {
                    Some(q) => format!("hf.co/{repo}:{q}"),
                    None => format!("hf.co/{repo}"),
                });
                out.push(LocalModel {
                    name,
                    size: size(&paths),
                    quant,
                    location: location.clone(),
                    repo: Some(repo.clone()),
                    paths,
                });
            }
        }
    }
    out
}

/// `NAME:QUANT` (or `NAME` for the default) when these files are a catalog model's.
fn catalog_name(repo: &str, rel: &[String]) -> Option<String> {
    for c in catalog::cards() {
        if c.repo.get().map(String::as_str) != Some(repo) {
            continue;
        }
        for (q, qf) in &c.quant {
            if qf.files.get().is_some_and(|f| f == rel) {
                return Some(if *q == c.default_quant { c.name.clone() } else { format!("{}:{q}", c.name) });
            }
        }
    }
    None
}

/// Ollama's store: `manifests/HOST/NAMESPACE/MODEL/TAG` (JSON) → the model layer's blob.
pub fn scan_ollama(root: &Path) -> Vec<LocalModel> {
    let mut out = Vec::new();
    let manifests = root.join("manifests");
    for host in subdirs(&manifests) {
        for ns in subdirs(&host) {
            for model in subdirs(&ns) {
                let Ok(rd) = std::fs::read_dir(&model) else { continue };
                let mut tags: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
                tags.sort();
                for tag in tags {
                    let Some(blob) = ollama_model_blob(root, &tag) else { continue };
                    let fname = |p: &Path| p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    let (h, n, m, t) = (fname(&host), fname(&ns), fname(&model), fname(&tag));
                    let name = if h == "registry.ollama.ai" && n == "library" {
                        format!("{m}:{t}")
                    } else if h == "registry.ollama.ai" {
                        format!("{n}/{m}:{t}")
                    } else {
                        format!("{h}/{n}/{m}:{t}")
                    };
                    let size = std::fs::metadata(&blob).map(|x| x.len()).unwrap_or(0);
                    out.push(LocalModel {
                        quant: quant_from_name(&t).or_else(|| header_quant(&blob)),
                        name,
                        paths: vec![blob],
                        size,
                        location: Location::Ollama,
                        repo: None,
                    });
                }
            }
        }
    }
    out
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn ollama_model_blob(root: &Path, manifest: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let layer = v["layers"].as_array()?.iter().find(|l| l["mediaType"] == "application/vnd.ollama.image.model")?;
    let digest = layer["digest"].as_str()?;
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let blob = root.join("blobs").join(format!("sha256-{hex}"));
    blob.is_file().then_some(blob)
}

/// The quantization a GGUF header declares (general.file_type), for files named by digest.
fn header_quant(path: &Path) -> Option<String> {
    let f = crate::gguf::GgufFile::open(path).ok()?;
    let t = f.get("general.file_type")?.as_u64()?;
    Some(
        match t {
            0 => "f32",
            1 => "f16",
            2 => "q4_0",
            3 => "q4_1",
            7 => "q8_0",
            8 => "q5_0",
            9 => "q5_1",
            10 => "q2_k",
            11 => "q3_k_s",
            12 => "q3_k_m",
            13 => "q3_k_l",
            14 => "q4_k_s",
            15 => "q4_k_m",
            16 => "q5_k_s",
            17 => "q5_k_m",
            18 => "q6_k",
            30 => "iq4_xs",
            32 => "bf16",
            38 => "mxfp4",
            _ => return None,
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::{ggufs, quant_from_name};
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_listed_only_to_ggufs_inside_allowed_dirs_and_loops_end() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("real.gguf"), b"GGUF....").unwrap();
        std::fs::write(outside.path().join("model.gguf"), b"GGUF....").unwrap();
        std::fs::write(outside.path().join("secret"), b"root:x:0:0").unwrap();
        // a link to a GGUF in an allowed dir (another models dir, EXO_LINK_TARGETS) is a model
        symlink(outside.path().join("model.gguf"), root.join("shared.gguf")).unwrap();
        // a planted link to a file that is no GGUF is not
        symlink(outside.path().join("secret"), root.join("passwd.gguf")).unwrap();
        symlink("/etc/passwd", root.join("etc.gguf")).unwrap();
        // link loops: a file link to itself, a dir link to its parent, a dir link outside
        symlink(root.join("self.gguf"), root.join("self.gguf")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/deep.gguf"), b"GGUF....").unwrap();
        symlink(root, root.join("sub/up")).unwrap();
        symlink(root.join("sub"), root.join("sub/again")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        let t = std::time::Instant::now();
        let names = |v: Vec<std::path::PathBuf>| -> Vec<String> {
            v.iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect()
        };
        let allowed = [std::fs::canonicalize(root).unwrap(), std::fs::canonicalize(outside.path()).unwrap()];
        assert_eq!(names(ggufs(root, false, &allowed)), ["real.gguf", "shared.gguf"]);
        // recursive: each directory once, whatever links lead back to it; none outside
        assert_eq!(names(ggufs(root, true, &allowed)), ["real.gguf", "shared.gguf", "sub/deep.gguf"]);
        // the same GGUF is no model while its dir is not allowed: files in the dir itself are
        assert_eq!(names(ggufs(root, false, &allowed[..1])), ["real.gguf"]);
        assert_eq!(names(ggufs(root, true, &[])), ["real.gguf", "sub/deep.gguf"]);
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn quants_from_file_names() {
        assert_eq!(quant_from_name("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf").as_deref(), Some("q4_k_m"));
        assert_eq!(quant_from_name("x/Meta-Llama-3.1-70B-Instruct-Q8_0-00001-of-00002.gguf").as_deref(), Some("q8_0"));
        assert_eq!(quant_from_name("DeepSeek-R1.Q8_0-00001-of-00015.gguf").as_deref(), Some("q8_0"));
        assert_eq!(quant_from_name("openai_gpt-oss-20b-MXFP4.gguf").as_deref(), Some("mxfp4"));
        assert_eq!(quant_from_name("model-bf16.gguf").as_deref(), Some("bf16"));
        assert_eq!(quant_from_name("tiny-llama.gguf"), None);
        assert_eq!(quant_from_name("llama3.1:8b"), None);
    }
}
