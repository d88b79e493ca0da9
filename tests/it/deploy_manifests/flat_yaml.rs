//! A rendered manifest as flat paths (`spec.template.spec.volumes[1].secret.secretName`)
//! to scalar values: enough of YAML for what kustomize prints (block style, two-space
//! indentation, sequences indented or not), without a YAML library.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// One document's scalars by path.
#[derive(Debug, Default)]
pub struct Flat(BTreeMap<String, String>);

/// An open mapping or sequence: the column of its key (sequence items: one past the
/// dash), its path and, for a sequence, the next item's index.
struct Frame {
    col: usize,
    path: String,
    next_item: usize,
}

impl Flat {
    pub fn parse(doc: &str) -> Result<Self> {
        let mut out = BTreeMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut block_scalar_at: Option<usize> = None;
        for line in doc.lines() {
            let trimmed = line.trim_start();
            let col = line.len() - trimmed.len();
            if let Some(c) = block_scalar_at {
                if trimmed.is_empty() || col > c {
                    continue;
                }
                block_scalar_at = None;
            }
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                continue;
            }
            let (mut col, mut rest) = (col, trimmed);
            while let Some(item) = rest.strip_prefix("- ").or((rest == "-").then_some("")) {
                while stack.last().is_some_and(|f| f.col > col) {
                    stack.pop();
                }
                let Some(parent) = stack.last_mut() else {
                    bail!("a sequence item outside any key: {line:?}");
                };
                let path = format!("{}[{}]", parent.path, parent.next_item);
                parent.next_item += 1;
                stack.push(Frame {
                    col: col + 1,
                    path,
                    next_item: 0,
                });
                col += 2;
                rest = item.trim_start();
            }
            if rest.is_empty() {
                continue;
            }
            let Some((key, value)) = split_key(rest) else {
                // A scalar item of a sequence (`- serve`): the item's own value.
                let Some(item) = stack.last() else {
                    bail!("a scalar outside any key: {line:?}");
                };
                out.insert(item.path.clone(), unquote(rest));
                continue;
            };
            while stack.last().is_some_and(|f| f.col >= col) {
                stack.pop();
            }
            let path = match stack.last() {
                Some(f) => format!("{}.{key}", f.path),
                None => key.to_owned(),
            };
            match value {
                "" => stack.push(Frame {
                    col,
                    path,
                    next_item: 0,
                }),
                v if v.starts_with('|') || v.starts_with('>') => {
                    block_scalar_at = Some(col);
                }
                v => {
                    out.insert(path, unquote(v));
                }
            }
        }
        Ok(Self(out))
    }

    /// The scalar at `path`.
    pub fn get(&self, path: &str) -> Option<&str> {
        self.0.get(path).map(String::as_str)
    }

    /// How many items the sequence at `path` has.
    pub fn len(&self, path: &str) -> usize {
        (0..)
            .take_while(|i| {
                let item = format!("{path}[{i}]");
                self.0
                    .range(item.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&item))
            })
            .count()
    }
}

/// `key: value` (or `key:`), for a plain key as manifests have them.
fn split_key(s: &str) -> Option<(&str, &str)> {
    let (key, value) = match s.split_once(": ") {
        Some((k, v)) => (k, v.trim()),
        None => (s.strip_suffix(':')?, ""),
    };
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    plain.then_some((key, value))
}

pub fn unquote(s: &str) -> String {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        s.to_owned()
    }
}

#[test]
fn kustomize_output_flattens_to_paths() -> Result<()> {
    let doc = "\
kind: Deployment
spec:
  template:
    spec:
      containers:
      - args:
        - serve
        env:
        - name: A
          value: \"1\"
        - name: B
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
      volumes:
      - configMap:
          name: c
        name: config
      - name: keys
        secret:
          items:
          - key: k
            path: p
          secretName: s
data:
  bus.toml: |
    [http]
    listen = \"x\"
other:
  - indented: true
";
    let f = Flat::parse(doc)?;
    let c = "spec.template.spec.containers[0]";
    assert_eq!(f.get(&format!("{c}.args[0]")), Some("serve"));
    assert_eq!(f.get(&format!("{c}.env[0].value")), Some("1"));
    assert_eq!(
        f.get(&format!("{c}.env[1].valueFrom.fieldRef.fieldPath")),
        Some("metadata.name")
    );
    assert_eq!(f.len(&format!("{c}.env")), 2);
    assert_eq!(f.len("spec.template.spec.volumes"), 2);
    let v = "spec.template.spec.volumes[1]";
    assert_eq!(f.get(&format!("{v}.secret.items[0].path")), Some("p"));
    assert_eq!(f.get(&format!("{v}.secret.secretName")), Some("s"));
    assert_eq!(f.get("spec.template.spec.volumes[0].name"), Some("config"));
    assert_eq!(f.get("data.bus.toml"), None);
    assert_eq!(f.get("other[0].indented"), Some("true"));
    Ok(())
}
