//! Hypothetical clusters for `exo plan --cluster FILE.toml` (docs/placement.md). Parses text (the
//! caller reads the file); errors name the field and say why.

use super::types::{Backend, Cluster, LinkSpec, NodeSpec};
use super::units::{parse_bandwidth, parse_duration, parse_size, UnitError};
use toml::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {reason}")]
pub struct ClusterFileError {
    /// e.g. `node[1].memory`
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ClusterFileError {
    ClusterFileError { field: field.into(), reason: reason.into() }
}

struct Table<'a> {
    path: String,
    t: &'a toml::Table,
}

impl<'a> Table<'a> {
    fn check_keys(&self, allowed: &[&str]) -> Result<(), ClusterFileError> {
        for k in self.t.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(err(
                    format!("{}.{k}", self.path),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }
    fn field(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.t.get(k)
    }
    fn req(&self, k: &str) -> Result<&'a Value, ClusterFileError> {
        self.get(k).ok_or_else(|| err(self.field(k), "missing"))
    }
    fn string(&self, k: &str) -> Result<&'a str, ClusterFileError> {
        self.req(k)?.as_str().ok_or_else(|| err(self.field(k), "must be a string"))
    }
    fn number(&self, k: &str) -> Result<Option<f64>, ClusterFileError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(Value::Float(f)) => Ok(Some(*f)),
            Some(_) => Err(err(self.field(k), "must be a number")),
        }
    }
    /// A quantity given as a string with a unit, or a bare number in the base unit.
    fn quantity<T>(
        &self,
        k: &str,
        parse: impl Fn(&str) -> Result<T, UnitError>,
        from_num: impl Fn(f64) -> T,
    ) -> Result<Option<T>, ClusterFileError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => parse(s).map(Some).map_err(|r| err(self.field(k), r.to_string())),
            Some(Value::Integer(i)) if *i >= 0 => Ok(Some(from_num(*i as f64))),
            Some(Value::Float(f)) if *f >= 0.0 => Ok(Some(from_num(*f))),
            Some(_) => Err(err(self.field(k), "must be a string with a unit or a non-negative number")),
        }
    }
}

fn tables<'a>(doc: &'a toml::Table, key: &str) -> Result<Vec<Table<'a>>, ClusterFileError> {
    match doc.get(key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_table()
                    .map(|t| Table { path: format!("{key}[{i}]"), t })
                    .ok_or_else(|| err(format!("{key}[{i}]"), "must be a table ([[{key}]])"))
            })
            .collect(),
        Some(_) => Err(err(key, format!("must be an array of tables ([[{key}]])"))),
    }
}

pub fn parse_cluster(text: &str) -> Result<Cluster, ClusterFileError> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| err("file", e.message().to_string()))?;
    for k in doc.keys() {
        if k != "node" && k != "link" {
            return Err(err(k, "unknown section (expected [[node]] and [[link]])"));
        }
    }
    let mut c = Cluster::default();
    for t in tables(&doc, "node")? {
        t.check_keys(&["name", "memory", "backend", "decode_gbps", "prefill_tflops"])?;
        let name = t.string("name")?.to_string();
        if name.is_empty() {
            return Err(err(t.field("name"), "must not be empty"));
        }
        if c.nodes.iter().any(|n: &NodeSpec| n.name == name) {
            return Err(err(t.field("name"), format!("{name:?} is already the name of another node")));
        }
        let memory =
            t.quantity("memory", parse_size, |x| x as u64)?.ok_or_else(|| err(t.field("memory"), "missing"))?;
        let backend = match t.get("backend") {
            None => Backend::Cpu,
            Some(Value::String(s)) => match s.as_str() {
                "cpu" => Backend::Cpu,
                "cuda" => Backend::Cuda,
                "metal" => Backend::Metal,
                "vulkan" => Backend::Vulkan,
                other => {
                    return Err(err(t.field("backend"), format!("{other:?} is not one of cpu, cuda, metal, vulkan")))
                }
            },
            Some(_) => return Err(err(t.field("backend"), "must be a string")),
        };
        let decode_gbps = t.number("decode_gbps")?.ok_or_else(|| err(t.field("decode_gbps"), "missing"))?;
        if !(decode_gbps.is_finite() && decode_gbps > 0.0) {
            return Err(err(t.field("decode_gbps"), "must be a positive number (GB of weights per second)"));
        }
        let prefill_tflops = t.number("prefill_tflops")?;
        if prefill_tflops.is_some_and(|p| !(p.is_finite() && p > 0.0)) {
            return Err(err(t.field("prefill_tflops"), "must be a positive number"));
        }
        c.nodes.push(NodeSpec { name, memory, backend, decode_gbps, prefill_tflops });
    }
    if c.nodes.is_empty() {
        return Err(err("node", "the file describes no nodes (add [[node]] tables)"));
    }
    for t in tables(&doc, "link")? {
        t.check_keys(&["a", "b", "bandwidth", "latency", "one_way"])?;
        let (a, b) = (t.string("a")?.to_string(), t.string("b")?.to_string());
        for (k, n) in [("a", &a), ("b", &b)] {
            if !c.nodes.iter().any(|x| &x.name == n) {
                return Err(err(t.field(k), format!("{n:?} is not a node in this file")));
            }
        }
        if a == b {
            return Err(err(t.field("b"), "a link must join two different nodes"));
        }
        let bandwidth =
            t.quantity("bandwidth", parse_bandwidth, |x| x)?.ok_or_else(|| err(t.field("bandwidth"), "missing"))?;
        if bandwidth <= 0.0 {
            return Err(err(t.field("bandwidth"), "must be positive"));
        }
        let latency = t.quantity("latency", parse_duration, |x| x)?.unwrap_or(0.0);
        let one_way = match t.get("one_way") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(_) => return Err(err(t.field("one_way"), "must be true or false")),
        };
        c.links.push(LinkSpec { from: a.clone(), to: b.clone(), bandwidth, latency });
        if !one_way {
            c.links.push(LinkSpec { from: b, to: a, bandwidth, latency });
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[node]]
name = "mac-studio"
memory = "128GiB"
backend = "metal"
decode_gbps = 400
prefill_tflops = 20

[[node]]
name = "dgx-spark"
memory = "128GiB"
backend = "cpu"
decode_gbps = 60

[[link]]
a = "mac-studio"
b = "dgx-spark"
bandwidth = "1Gbit"
latency = "0.3ms"
"#;

    #[test]
    fn parses_the_product_example() {
        let c = parse_cluster(GOOD).unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].memory, 128 << 30);
        assert_eq!(c.nodes[0].backend, Backend::Metal);
        assert_eq!(c.nodes[1].prefill_tflops, None);
        assert_eq!(c.links.len(), 2, "symmetric by default");
        assert_eq!(c.links[0].bandwidth, 125e6);
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            parse_cluster(&GOOD.replace("\"128GiB\"\nbackend = \"cpu\"", "\"12XB\"\nbackend = \"cpu\"")).unwrap_err();
        assert_eq!(e.field, "node[1].memory");
        assert!(e.reason.contains("12XB"), "{e}");
        let e = parse_cluster(&GOOD.replace("decode_gbps = 60", "decode_gbps = -1")).unwrap_err();
        assert_eq!(e.field, "node[1].decode_gbps");
        let e = parse_cluster(&GOOD.replace("b = \"dgx-spark\"", "b = \"dgx\"")).unwrap_err();
        assert_eq!(e.field, "link[0].b");
        let e = parse_cluster(&GOOD.replace("backend = \"metal\"", "backend = \"tpu\"")).unwrap_err();
        assert_eq!(e.field, "node[0].backend");
        let e = parse_cluster(&GOOD.replace("decode_gbps = 400", "decode_gbps = 400\nspeed = 3")).unwrap_err();
        assert_eq!(e.field, "node[0].speed");
        let e = parse_cluster(&GOOD.replace("latency = \"0.3ms\"", "latency = \"soon\"")).unwrap_err();
        assert_eq!(e.field, "link[0].latency");
        let e = parse_cluster("[[node]]\nname = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "node[0].memory");
        let e = parse_cluster("node = 3").unwrap_err();
        assert_eq!(e.field, "node");
        let e = parse_cluster("[[node]\n").unwrap_err();
        assert_eq!(e.field, "file");
    }
}
