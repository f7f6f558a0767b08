//! The configuration's text: where Coffer's pieces are spliced in and taken out, the handler
//! tables themselves, and parse errors with their line and column.

use super::*;

/// The configuration after `register` on `original` (None: there is none yet).
pub(super) fn plan(req: &Request, original: Option<&str>) -> Result<Plan, String> {
    let file = req.config.display();
    let created = match original {
        Some(_) => None,
        None => Some(format!(
            "version = {}\n",
            if req.containerd.major >= 2 { 3 } else { 2 }
        )),
    };
    let base = original.or(created.as_deref()).unwrap_or_default();
    let doc = parse(req.config, base)?;
    let version = config_version(req.config, &doc)?;
    let eol = if base.contains("\r\n") { "\r\n" } else { "\n" };
    for name in &req.handlers.names {
        if lookup(doc.as_table(), &handler_keys(version, name)).is_some() {
            return Err(format!(
                "{file} already defines the runtime handler {name}; remove it, then register again"
            ));
        }
    }
    let (at, text, drop_in) = if req.containerd.major < 2 {
        if version != 2 {
            return Err(format!(
                "{file} is a version {version} configuration, which containerd {} cannot read",
                req.containerd.text
            ));
        }
        let mut text = String::new();
        if !base.is_empty() && !base.ends_with('\n') {
            text.push_str(eol);
        }
        for line in ["", BEGIN_MARKER] {
            text.push_str(line);
            text.push_str(eol);
        }
        text.push_str(&tables(version, req.handlers, eol));
        text.push_str(END_MARKER);
        text.push_str(eol);
        (Some(base.len()), text, None)
    } else {
        let content = drop_in_text(version, req.handlers);
        match imports_insertion(req, &doc, base, eol)? {
            Some((at, text)) => (Some(at), text, Some(content)),
            None => (None, String::new(), Some(content)),
        }
    };
    // One piece at most, so its offset in the original is its offset in the result.
    let inserted: Vec<Insertion> = at
        .map(|offset| Insertion { offset, text })
        .into_iter()
        .collect();
    let config = splice(base, &inserted);
    check(req, version, &config, drop_in.as_deref())?;
    Ok(Plan {
        config,
        created,
        inserted,
        drop_in,
    })
}

/// Where the drop-in's entry goes in `imports`, and the text: right after the array's `[` (so it
/// comes first and the rest of the array, on one line or many, stays as it is), or a new
/// `imports` line after the `version` line. None when `imports` already lists the drop-in.
pub(super) fn imports_insertion(
    req: &Request,
    doc: &ImDocument<&str>,
    base: &str,
    eol: &str,
) -> Result<Option<(usize, String)>, String> {
    let file = req.config.display();
    let root = doc.as_table();
    let entry = toml_string(req.drop_in);
    if let Some(item) = root.get("imports") {
        let array = item.as_array().ok_or_else(|| {
            format!(
                "{file}: imports is not an array (line {})",
                line_of(base, item.span())
            )
        })?;
        // containerd takes relative imports as relative to the configuration's directory.
        let dir = parent(req.config);
        if array
            .iter()
            .filter_map(|v| v.as_str())
            .any(|s| dir.join(s) == Path::new(req.drop_in))
        {
            return Ok(None);
        }
        let start = array
            .span()
            .map(|s| s.start)
            .filter(|&s| base.as_bytes().get(s) == Some(&b'['))
            .ok_or_else(|| format!("{file}: cannot locate the imports array"))?;
        // A separator only when another entry follows, and no space before a line break.
        let rest = &base[start + 1..];
        let text = if array.is_empty() {
            entry
        } else if rest.starts_with([' ', '\t', '\r', '\n', '#']) {
            format!("{entry},")
        } else {
            format!("{entry}, ")
        };
        return Ok(Some((start + 1, text)));
    }
    let end = root
        .get("version")
        .and_then(Item::span)
        .map(|s| s.end)
        .ok_or_else(|| format!("{file}: cannot locate the version line"))?;
    let line = format!("imports = [{entry}]");
    Ok(Some(match base[end..].find('\n') {
        Some(n) => (end + n + 1, format!("{line}{eol}")),
        None => (base.len(), format!("{eol}{line}")),
    }))
}

/// Parses the result and checks that containerd would find the handlers in it.
pub(super) fn check(
    req: &Request,
    version: i64,
    config: &str,
    drop_in: Option<&str>,
) -> Result<(), String> {
    let file = req.config.display();
    let doc = ImDocument::parse(config).map_err(|e| {
        format!(
            "{file}: adding the handlers would make it invalid TOML ({}); remove what conflicts \
             with the handler tables, then register again",
            parse_problem(config, &e)
        )
    })?;
    let (tables, place) = match drop_in {
        None => (doc, file.to_string()),
        Some(text) => {
            let dir = parent(req.config);
            let imported = doc
                .as_table()
                .get("imports")
                .and_then(Item::as_array)
                .is_some_and(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .any(|s| dir.join(s) == Path::new(req.drop_in))
                });
            if !imported {
                return Err(format!("{file}: the drop-in would not be in its imports"));
            }
            let d = ImDocument::parse(text).map_err(|e| e.to_string())?;
            (d, req.drop_in.to_owned())
        }
    };
    for name in &req.handlers.names {
        let runtime_type = lookup(tables.as_table(), &handler_keys(version, name))
            .and_then(|h| h.get("runtime_type"))
            .and_then(Item::as_str);
        if runtime_type != Some(RUNTIME_TYPE) {
            return Err(format!(
                "{place}: the runtime handler {name} would not be registered"
            ));
        }
    }
    Ok(())
}

/// The handler tables, in the layout of configuration `version`, as
/// `packaging/containerd/coffer-v{2,3}.toml` show them.
pub(super) fn tables(version: i64, handlers: &Handlers, eol: &str) -> String {
    let plugin = toml_key(cri_runtime_plugin(version));
    let annotations = POD_ANNOTATIONS.map(toml_string).join(", ");
    let mut out = String::new();
    for (i, name) in handlers.names.iter().enumerate() {
        let table = format!("plugins.{plugin}.containerd.runtimes.{}", toml_key(name));
        let config = format!("{}/{name}.toml", handlers.config_dir.trim_end_matches('/'));
        let lines = [
            format!("[{table}]"),
            format!("  runtime_type = {}", toml_string(RUNTIME_TYPE)),
            format!("  runtime_path = {}", toml_string(&handlers.shim)),
            format!("  pod_annotations = [{annotations}]"),
            format!("[{table}.options]"),
            format!("  ConfigPath = {}", toml_string(&config)),
        ];
        if i > 0 {
            out.push_str(eol);
        }
        for line in lines {
            out.push_str(&line);
            out.push_str(eol);
        }
    }
    out
}

pub(super) fn drop_in_text(version: i64, handlers: &Handlers) -> String {
    format!(
        "# Coffer's runtime handlers, written and listed in the imports of containerd's \
         configuration\n# by `coffer containerd-config register`; `coffer containerd-config \
         unregister` takes both out.\nversion = {version}\n\n{}",
        tables(version, handlers, "\n")
    )
}

/// The CRI plugin that holds the runtime handlers in configuration `version`.
pub(super) fn cri_runtime_plugin(version: i64) -> &'static str {
    if version >= 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

pub(super) fn handler_keys(version: i64, name: &str) -> [&str; 5] {
    [
        "plugins",
        cri_runtime_plugin(version),
        "containerd",
        "runtimes",
        name,
    ]
}

pub(super) fn lookup<'a>(root: &'a toml_edit::Table, keys: &[&str]) -> Option<&'a Item> {
    let (first, rest) = keys.split_first()?;
    rest.iter()
        .try_fold(root.get(first)?, |item, key| item.get(*key))
}

/// The configuration's `version` (2 or 3).
pub(super) fn config_version(file: &Path, doc: &ImDocument<&str>) -> Result<i64, String> {
    let file = file.display();
    let Some(item) = doc.as_table().get("version") else {
        return Err(format!(
            "{file} has no `version = 2` (or 3): it is a version 1 configuration, which Coffer \
             does not edit; migrate it with `containerd config migrate` first"
        ));
    };
    match item.as_integer() {
        Some(v @ (2 | 3)) => Ok(v),
        Some(v) => Err(format!(
            "{file}: configuration version {v} is not one Coffer knows (2 or 3)"
        )),
        None => Err(format!(
            "{file}: version is not a number (line {})",
            line_of(doc.raw(), item.span())
        )),
    }
}

pub(super) fn parse<'a>(file: &Path, text: &'a str) -> Result<ImDocument<&'a str>, String> {
    ImDocument::parse(text).map_err(|e| {
        format!(
            "{}: not valid TOML: {}",
            file.display(),
            parse_problem(text, &e)
        )
    })
}

/// A parse error on one line: where, then what.
pub(super) fn parse_problem(text: &str, e: &TomlError) -> String {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

pub(super) fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |s| position(text, s.start).0)
}

pub(super) fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

pub(super) fn toml_key(s: &str) -> String {
    toml_edit::Key::new(s).display_repr().into_owned()
}

/// `base` with the pieces spliced in; each offset is the piece's place in the result.
pub(super) fn splice(base: &str, inserted: &[Insertion]) -> String {
    let mut out =
        String::with_capacity(base.len() + inserted.iter().map(|i| i.text.len()).sum::<usize>());
    let mut from = 0;
    for piece in inserted {
        let at = piece.offset - (out.len() - from);
        out.push_str(&base[from..at]);
        out.push_str(&piece.text);
        from = at;
    }
    out.push_str(&base[from..]);
    out
}

/// `text` without the pieces: at their offsets when they are all still there, else each at
/// the one place it occurs. Err says which piece is gone or ambiguous.
pub(super) fn take_out(inserted: &[Insertion], text: &str) -> Result<String, String> {
    let mut end = 0;
    let in_place = inserted.iter().all(|p| {
        let Some(stop) = p.offset.checked_add(p.text.len()) else {
            return false;
        };
        let here = p.offset >= end && text.get(p.offset..stop) == Some(p.text.as_str());
        end = stop;
        here
    });
    if in_place {
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for p in inserted {
            out.push_str(&text[from..p.offset]);
            from = p.offset + p.text.len();
        }
        out.push_str(&text[from..]);
        return Ok(out);
    }
    let mut out = text.to_owned();
    for p in inserted.iter().rev() {
        let mut hits = out.match_indices(p.text.as_str()).map(|(at, _)| at);
        match (hits.next(), hits.next()) {
            (Some(at), None) if !p.text.is_empty() => out.replace_range(at..at + p.text.len(), ""),
            (None, _) => return Err(format!("{} is no longer in it", describe(&p.text))),
            _ => return Err(format!("{} occurs more than once", describe(&p.text))),
        }
    }
    Ok(out)
}

/// A piece of added text, named by its first line.
pub(super) fn describe(piece: &str) -> String {
    let line = piece
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let short: String = line.chars().take(60).collect();
    let more = if short.len() < line.len() { "..." } else { "" };
    format!("the added \"{short}{more}\"")
}
