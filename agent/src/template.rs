//! `## template: jinja` rendering with the names cloud-init exposes (and the two CloudSigma lacks).

use cloudsigma_api::ServerContext;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template variable '{name}' is undefined (line {line}); the server context provides ds.meta_data.*, v1.* and the names in docs/agent.md")]
    Undefined { name: String, line: usize },
    #[error("jinja template error at line {line}: {msg}")]
    Other { line: usize, msg: String },
}

/// cloud-init's CloudSigma hostname rule: `name[:61]` when it matches `^[A-Za-z0-9 -_\.]+$`,
/// else the uuid's first group. Note that `" -_"` in that class is a *range* (0x20..=0x5f), which
/// we reproduce exactly (so e.g. `:` and `@` pass, lowercase letters pass via a-z).
pub fn local_hostname(ctx: &ServerContext) -> String {
    let name: String = ctx.name.chars().take(61).collect();
    let ok = !ctx.name.is_empty()
        && ctx
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || (' '..='_').contains(&c) || c == '.');
    if ok {
        name
    } else {
        ctx.uuid.split('-').next().unwrap_or(&ctx.uuid).to_string()
    }
}

/// Region: meta.region, then global_context.region, then vendor_data.location.
pub fn region(ctx: &ServerContext) -> Option<String> {
    ctx.meta
        .get("region")
        .or_else(|| ctx.global_context.get("region"))
        .cloned()
        .or_else(|| {
            ctx.vendor_data
                .as_ref()?
                .get("location")?
                .as_str()
                .map(str::to_string)
        })
}

/// cloud-init adds underscore aliases for hyphenated keys (`cloudinit-user-data` →
/// `cloudinit_user_data`) so templates can reach them with dot syntax.
fn alias_hyphens(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let aliases: Vec<(String, Value)> = m
                .iter()
                .filter(|(k, _)| k.contains('-'))
                .map(|(k, v)| (k.replace('-', "_"), v.clone()))
                .collect();
            for (k, v) in aliases {
                m.entry(k).or_insert(v);
            }
            for child in m.values_mut() {
                alias_hyphens(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(alias_hyphens),
        _ => {}
    }
}

/// The template context: `ds.meta_data` (whole server context + instance_id + local_hostname),
/// `v1.*`, and the v1 names also at top level.
pub fn build_context(ctx: &ServerContext, serial: &str) -> Value {
    let mut meta_data = serde_json::to_value(ctx).unwrap_or_else(|_| Value::Object(Map::new()));
    alias_hyphens(&mut meta_data);
    let hostname = local_hostname(ctx);
    if let Value::Object(m) = &mut meta_data {
        m.insert("instance_id".into(), Value::String(ctx.uuid.clone()));
        m.insert("local_hostname".into(), Value::String(hostname.clone()));
    }
    let region = region(ctx);
    let keys: Vec<Value> = ctx
        .meta
        .get("ssh_public_key")
        .map(|k| vec![Value::String(k.clone())])
        .unwrap_or_default();
    let v1 = serde_json::json!({
        "instance_id": ctx.uuid,
        "local_hostname": hostname,
        "cloud_name": "cloudsigma",
        "cloud_id": "cloudsigma",
        "platform": "cloudsigma",
        "subplatform": format!("cepko ({serial})"),
        "region": region,
        "availability_zone": ctx.meta.get("availability_zone").cloned().or(region.clone()),
        "machine": std::env::consts::ARCH,
        "public_ssh_keys": keys,
    });
    let mut root = Map::new();
    if let Value::Object(m) = &v1 {
        for (k, v) in m {
            root.insert(k.clone(), v.clone());
        }
    }
    root.insert("v1".into(), v1);
    root.insert(
        "ds".into(),
        serde_json::json!({ "meta_data": meta_data, "_doc": "CloudSigma server context via cloudsigma-agent" }),
    );
    Value::Object(root)
}

fn resolves(ctx: &Value, dotted: &str) -> bool {
    let mut cur = ctx;
    for part in dotted.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    true
}

/// Instructions a template may execute (minijinja's fuel): Cluster API templates take a few
/// hundred; a runaway loop stops here with "engine ran out of fuel".
pub const FUEL: u64 = 1_000_000;
/// Nesting of blocks, loops, macros and calls (minijinja counts includes and macros as more).
pub const RECURSION_LIMIT: usize = 100;
/// The largest rendered user data: far above any bootstrap data, far below what hurts the node.
pub const MAX_OUTPUT: usize = 16 << 20;

/// The rendered text, refusing to grow beyond [`MAX_OUTPUT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!(
                "the rendered user data exceeds {} MiB",
                MAX_OUTPUT >> 20
            )));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render with strict undefined semantics: any undefined name is an error naming it. Bounded in
/// instructions ([`FUEL`]), nesting ([`RECURSION_LIMIT`]) and output ([`MAX_OUTPUT`]): the data is
/// the cluster owner's, but a mistake in it must fail the step, not hang or exhaust the node.
pub fn render(source: &str, ctx: &Value) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    let tmpl = env
        .template_from_named_str("user-data", source)
        .map_err(|e| TemplateError::Other {
            line: e.line().map(|l| l + 1).unwrap_or(0),
            msg: e.detail().unwrap_or("syntax error").to_string(),
        })?;
    let mut sink = Bounded(Vec::new());
    let rendered = tmpl
        .render_captured_to(ctx, &mut sink)
        .map(|_| String::from_utf8_lossy(&sink.0).into_owned());
    match rendered {
        Ok(mut out) => {
            // The header line was removed before rendering: line numbers in errors are +1.
            if !out.ends_with('\n') && source.ends_with('\n') {
                out.push('\n');
            }
            Ok(out)
        }
        Err(e) => {
            let line = e.line().map(|l| l + 1).unwrap_or(0);
            if e.kind() == ErrorKind::UndefinedError {
                // Name the first undeclared (dotted) variable that the context cannot resolve.
                let mut names: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
                names.sort();
                let src_line = source.lines().nth(line.saturating_sub(2)).unwrap_or("");
                let missing: Vec<&String> = names.iter().filter(|n| !resolves(ctx, n)).collect();
                let name = missing
                    .iter()
                    .find(|n| src_line.contains(n.as_str()))
                    .or(missing.first())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "<expression>".into());
                Err(TemplateError::Undefined { name, line })
            } else {
                // A write failure's reason (the output bound) is its source, not its detail.
                let detail = match (e.kind(), std::error::Error::source(&e)) {
                    (ErrorKind::WriteFailure, Some(source)) => source.to_string(),
                    _ => e.detail().unwrap_or("").to_string(),
                };
                Err(TemplateError::Other {
                    line,
                    msg: format!("{}: {detail}", e.kind()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str) -> ServerContext {
        serde_json::from_value(serde_json::json!({
            "uuid":"1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff","name":name,
            "meta":{"cloudinit-dsmode":"net","region":"zrh"},"global_context":{}
        }))
        .unwrap()
    }

    /// The template runs in bounded time, nesting and output (issue 21 item 9).
    #[test]
    fn runaway_templates_fail_quickly() {
        let render_soon = |src: &'static str| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let c = build_context(&ctx("w"), "/dev/ttyS1");
                let _ = tx.send(render(src, &c));
            });
            rx.recv_timeout(std::time::Duration::from_secs(20))
                .expect("rendering did not stop in time")
                .unwrap_err()
                .to_string()
        };
        let e = render_soon(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
        );
        assert!(e.contains("ran out of fuel"), "{e}");
        let e = render_soon("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}\n");
        assert!(e.contains("recursion"), "{e}");
        let e = render_soon("{% for i in range(20) %}{{ 'x' * 1000000 }}{% endfor %}\n");
        assert!(e.contains("exceeds 16 MiB"), "{e}");
    }

    #[test]
    fn hostname_rule() {
        assert_eq!(local_hostname(&ctx("worker-0")), "worker-0");
        assert_eq!(local_hostname(&ctx("bad~name{x}")), "1b5ea8f2");
        assert_eq!(local_hostname(&ctx(&"a".repeat(70))).len(), 61);
    }

    #[test]
    fn renders_names() {
        let c = build_context(&ctx("worker-0"), "/dev/ttyS1");
        let out = render(
            "id: cloudsigma://{{ ds.meta_data.instance_id }}\nname: {{ ds.meta_data.local_hostname }} {{ v1.cloud_name }} {{ v1.region }} {{ ds.meta_data.meta.cloudinit_dsmode }}\n",
            &c,
        )
        .unwrap();
        assert_eq!(out, "id: cloudsigma://1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff\nname: worker-0 cloudsigma zrh net\n");
    }

    #[test]
    fn undefined_names_variable_and_line() {
        let c = build_context(&ctx("w"), "/dev/ttyS1");
        let e = render("a: 1\nb: {{ ds.meta_data.nope }}\n", &c).unwrap_err();
        match e {
            TemplateError::Undefined { name, line } => {
                assert_eq!(name, "ds.meta_data.nope");
                assert_eq!(
                    line, 3,
                    "line counted in the original user data (header is line 1)"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
