//! The worked examples in docs/ are checked here: each `$ coffer ...` line in a ```console block
//! is run (with `initdata.toml` standing for the Init-Data example) and its output must equal
//! the lines printed under it.

use std::process::Command;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../initdata/tests/data/seed-initdata.toml"
);

/// (command line, expected output) pairs from the console blocks of a Markdown file.
fn console_examples(markdown: &str) -> Vec<(String, String)> {
    let mut examples: Vec<(String, String)> = Vec::new();
    let mut in_console = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_console = line.trim() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            examples.push((cmd.to_owned(), String::new()));
        } else if let Some((_, out)) = examples.last_mut() {
            out.push_str(line);
            out.push('\n');
        }
    }
    examples
}

#[test]
fn attestation_worked_example() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/attestation.md"
    ))
    .unwrap();
    let examples = console_examples(&doc);
    assert!(examples.len() >= 6, "the worked example lost its commands");
    for (cmd, expected) in examples {
        let mut words = cmd.split_whitespace();
        assert_eq!(words.next(), Some("coffer"), "{cmd}");
        let args: Vec<&str> = words
            .map(|w| if w == "initdata.toml" { SEED } else { w })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{cmd}");
    }
}

#[test]
fn the_example_size_is_as_documented() {
    assert_eq!(std::fs::metadata(SEED).unwrap().len(), 1583);
}
