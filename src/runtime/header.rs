//! A model this node lacks, on a cluster: its header (metadata, vocabulary, tensor table) fetched
//! into a header-only partial model from a node that holds the whole file, else from the hub,
//! so that it can be placed and its vocabulary loaded while each stage fetches its own window.
//! Alone (no peers), a node pulls the whole model as before.

use super::request::ModelRef;
use super::{blocking, ErrorKind, Runtime, RuntimeError};
use crate::cluster::{sources_for, ClusterNode, PeerSource};
use crate::gguf::{ModelFiles, ModelShape};
use crate::store::fetch::{self, OnProgress, RangeSource};
use crate::store::partial::Partial;
use crate::store::{quant_from_name, HubFile, LocalModel, Location, Resolved, Store};
use std::path::PathBuf;
use std::sync::Arc;

/// The model a load (or a show) is about: on this node, or, on a cluster with peers when this
/// node lacks it, a header-only partial ([`Location::HeaderOnly`]).
pub(super) async fn locate(rt: &Runtime, model: &ModelRef) -> Result<LocalModel, RuntimeError> {
    let (store, m) = (rt.store.clone(), model.clone());
    let missing = match blocking(move || resolve_local(&store, &m)).await {
        Err(e @ RuntimeError::ModelNotFound { .. }) => e,
        r => return r,
    };
    // by name only: a path is this machine's business
    let (Some(node), ModelRef::Name(name)) = (&rt.cluster, model) else { return Err(missing) };
    if node.peers().is_empty() {
        return Err(missing);
    }
    match header_only(node, &rt.store, name).await {
        Ok(m) => Ok(m),
        Err(tried) if tried.is_empty() => Err(missing),
        Err(tried) => Err(RuntimeError::Store {
            kind: ErrorKind::Upstream,
            reason: format!(
                "{name} is not on this node and its header could not be fetched: {}",
                tried.iter().map(Tried::to_string).collect::<Vec<_>>().join("; ")
            ),
        }),
    }
}

/// One way of getting a header that failed.
#[derive(Debug, thiserror::Error)]
enum Tried {
    #[error("no writable models dir to keep its header in")]
    NoDir,
    #[error("node at {addr}: {source}")]
    Node { addr: String, source: crate::transport::TransportError },
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error("the hub: {0}")]
    Hub(crate::store::StoreError),
    #[error(transparent)]
    Here(#[from] RuntimeError),
}

/// The header of `name` from the fastest node holding it whole, else from the hub when the name
/// leads there. `Err` lists what was tried (empty: nothing could be).
async fn header_only(node: &Arc<ClusterNode>, store: &Store, name: &str) -> Result<LocalModel, Vec<Tried>> {
    let Some(dir) = store.partial_dir().map(PathBuf::from) else { return Err(vec![Tried::NoDir]) };
    let (s, n, d) = (store.clone(), name.to_string(), dir.clone());
    let (remote, here) =
        blocking(move || Ok((s.resolve_name(&n), header_here(&d, &n)))).await.map_err(|e| vec![e.into()])?;
    let remote = match remote {
        Ok(Resolved::Remote(r)) => Some(r),
        _ => None,
    };
    if let Some(p) = here {
        return Ok(header_model(name, &p, remote));
    }
    let me = node.hello.node_name.clone();
    let holders: Vec<(String, String)> = node.holders(name, None).into_iter().filter(|h| h.0 != me).collect();
    let quiet: OnProgress = Arc::new(|_, _| {});
    let mut tried = Vec::new();
    let mut got = None;
    for addr in sources_for(&node.hello.node_id, &me, &node.peers(), &me, &holders) {
        let src: Arc<dyn RangeSource> = match node.conn(&addr).await {
            Ok(conn) => Arc::new(PeerSource::new(conn, name)),
            Err(source) => {
                tried.push(Tried::Node { addr, source });
                continue;
            }
        };
        match fetch::fetch_header(&dir, name, &src, &quiet).await {
            Ok((p, _, _)) => {
                got = Some(p);
                break;
            }
            Err(e) => tried.push(e.into()),
        }
    }
    // the hub file, for the stages to fall back on (and the header itself if no node sent it)
    let hub = match &remote {
        // offline: a name no node holds stays "not found", as on a node alone
        Some(_) if store.offline => None,
        Some(r) => match store.hub_file(r).await {
            Ok(f) => Some(f),
            Err(e) => {
                tried.push(Tried::Hub(e));
                None
            }
        },
        None => None,
    };
    if got.is_none() {
        if let Some(f) = &hub {
            match store.hub_range(f).await {
                Ok(src) => {
                    match fetch::fetch_header(&dir, name, &(Arc::new(src) as Arc<dyn RangeSource>), &quiet).await {
                        Ok((p, _, _)) => got = Some(p),
                        Err(e) => tried.push(e.into()),
                    }
                }
                Err(e) => tried.push(Tried::Hub(e)),
            }
        }
    }
    let Some(mut p) = got else { return Err(tried) };
    // where the rest is (for the stages) and how many layers it has (for `exo list`)
    if hub.is_some() {
        p.sidecar.hub = hub;
    }
    let p = blocking(move || {
        let files = crate::gguf::ModelFiles::open(&p.path)
            .map_err(|e| RuntimeError::Load { model: p.sidecar.model.clone(), reason: e.to_string() })?;
        p.sidecar.n_layer = crate::gguf::ModelShape::from_files(&files).map(|s| s.n_layer).unwrap_or(0);
        p.save()?;
        Ok(p)
    })
    .await
    .map_err(|e| vec![e.into()])?;
    tracing::info!(model = name, path = %p.path.display(), "this node lacks the model: its header is here; stages fetch their windows");
    Ok(header_model(name, &p, remote))
}

/// A partial of `name` under `dir` whose header is present (fetched before): no round trip.
/// Blocking.
fn header_here(dir: &std::path::Path, name: &str) -> Option<Partial> {
    let p = Partial::open(&Partial::path_in(dir, name)).filter(|p| p.sidecar.model == name)?;
    let g = crate::gguf::GgufFile::open(&p.path).ok()?;
    p.covers(&[(0, g.data_offset)]).then_some(p)
}

fn header_model(name: &str, p: &Partial, remote: Option<crate::store::RemoteModel>) -> LocalModel {
    LocalModel {
        name: name.to_string(),
        paths: vec![p.path.clone()],
        size: p.sidecar.size,
        quant: remote.as_ref().and_then(|r| r.quant.clone()).or_else(|| quant_from_name(name)),
        location: Location::HeaderOnly,
        repo: remote.map(|r| r.repo),
    }
}

/// The hub file stages may fetch their windows from: the one a header-only partial came with,
/// or the one a model in the hub's layout (`.../snapshots/REV/FILE`) was downloaded from.
/// Blocking (reads a sidecar).
pub(super) fn hub_of(local: &LocalModel) -> Option<HubFile> {
    if local.location == Location::HeaderOnly {
        return Partial::open(local.first())?.sidecar.hub;
    }
    let ([path], Some(repo)) = (local.paths.as_slice(), &local.repo) else { return None };
    let (_, rest) = path.to_str()?.rsplit_once("/snapshots/")?;
    let (_, file) = rest.split_once('/')?;
    let f = HubFile { repo: repo.clone(), file: file.to_string(), size: local.size, sha256: None };
    f.check().ok().map(|_| f)
}

/// A model on this node by name (never a path), or a CLI path.
pub(super) fn resolve_local(store: &Store, model: &ModelRef) -> Result<LocalModel, RuntimeError> {
    let resolved = match model {
        ModelRef::Name(n) => store.resolve_name(n)?,
        ModelRef::Path(p) => store.resolve(&p.display().to_string())?,
    };
    match resolved {
        Resolved::Local(m) => Ok(m),
        Resolved::Remote(_) => {
            Err(RuntimeError::ModelNotFound { name: model.display(), hint: ": it is not on this node".into() })
        }
    }
}

pub(super) fn read_shape(m: &LocalModel) -> Result<ModelShape, RuntimeError> {
    let bad = |e: &dyn std::fmt::Display| unusable(m, e);
    let files = ModelFiles::open(m.first()).map_err(|e| bad(&e))?;
    ModelShape::from_files(&files).map_err(|e| bad(&e))
}

/// A file behind a model name that is no usable GGUF (not one, truncated, malformed): the
/// request named a model that cannot run, a 400 naming `model` (not a server error), and the
/// message names the file, not its absolute path.
pub(super) fn unusable(m: &LocalModel, e: &dyn std::fmt::Display) -> RuntimeError {
    let file = m.first().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let reason = e.to_string().replace(&*m.first().to_string_lossy(), &file);
    RuntimeError::field(crate::runtime::Field::Model, format!("{} is not a usable GGUF model: {reason}", m.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_file_of_a_model_in_the_hub_layout() {
        let m = |path: &str, repo: Option<&str>| LocalModel {
            name: "m".into(),
            paths: vec![path.into()],
            size: 7,
            quant: None,
            location: Location::HfCache,
            repo: repo.map(String::from),
        };
        let f = hub_of(&m("/h/models--org--m/snapshots/abc/q4/m.Q4_K_M.gguf", Some("org/m"))).unwrap();
        assert_eq!((f.repo.as_str(), f.file.as_str(), f.size), ("org/m", "q4/m.Q4_K_M.gguf", 7));
        assert!(hub_of(&m("/models/m.gguf", Some("org/m"))).is_none(), "not the hub layout");
        assert!(hub_of(&m("/h/snapshots/abc/m.gguf", None)).is_none(), "no repository");
        assert!(hub_of(&m("/h/snapshots/abc/../../x.gguf", Some("org/m"))).is_none(), "not a plain path");
    }
}
