//! The CLI and README.md agree: the README's "Commands" list names exactly the
//! subcommands `labimg --help` lists, and every `--flag` the README shows after
//! `labimg <command>` (in a code span or block) is one that command's `--help` lists.

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");
const README: &str = include_str!("../README.md");

/// `labimg <args> --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "labimg {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The names under "Commands:" in a `--help` text, without clap's own `help`.
/// A name starts its line after two spaces; wrapped descriptions are indented deeper.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

/// The README's `## Commands` list: one "- `labimg <name>` — …" line per subcommand.
fn readme_commands() -> BTreeSet<String> {
    let section = README
        .split("\n## Commands\n")
        .nth(1)
        .expect("README.md has a `## Commands` section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("- `labimg "))
        .map(|rest| rest.split(['`', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn readme_lists_every_subcommand() {
    let cli = subcommands(&help(&[]));
    assert!(cli.contains("build") && cli.contains("serve"), "{cli:?}");
    let readme = readme_commands();
    let missing: Vec<_> = cli.difference(&readme).collect();
    let extra: Vec<_> = readme.difference(&cli).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md `## Commands` and `labimg --help` differ: not in the README {missing:?}, \
         not a subcommand {extra:?}"
    );
}

/// Code in the README: fenced blocks line by line (a trailing `\` joins the next
/// line), and inline code spans.
fn readme_code() -> Vec<String> {
    let mut code = Vec::new();
    let mut prose = String::new();
    let mut fenced = false;
    let mut continued: Option<String> = None;
    for line in README.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            prose.push_str(line);
            prose.push('\n');
            continue;
        }
        let line = line.split(" #").next().unwrap();
        let mut joined = continued.take().unwrap_or_default();
        joined.push_str(line);
        match joined.strip_suffix('\\') {
            Some(head) => continued = Some(head.to_owned()),
            None => code.push(joined),
        }
    }
    code.extend(prose.split('`').skip(1).step_by(2).map(String::from));
    code
}

/// The `--long` flags in a piece of code (`[--resolved]`, `--out=DIR` and `--set` alike).
fn flags(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("--") {
        let before = rest[..i].chars().next_back();
        let name: String = rest[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') && name.len() > 1 {
            found.push(format!("--{name}"));
        }
        rest = &rest[i + 2 + name.len()..];
    }
    found
}

/// Whether `help` lists `flag` (not merely a longer flag that starts with it).
fn lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        !help[i + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn readme_flags_exist() {
    let commands = subcommands(&help(&[]));
    let mut checked = BTreeSet::new();
    let mut unknown = Vec::new();
    for code in readme_code() {
        // Each `labimg <command> …` in the piece, up to the next `labimg `.
        for part in code.split("labimg ").skip(1) {
            let Some(command) = part.split_whitespace().next() else {
                continue;
            };
            if !commands.contains(command) {
                continue;
            }
            // A command with subcommands (`profile`): its flags may be theirs.
            let mut text = help(&[command]);
            for sub in subcommands(&text.clone()) {
                text.push_str(&help(&[command, &sub]));
            }
            for flag in flags(part) {
                if lists(&text, &flag) {
                    checked.insert(format!("{command} {flag}"));
                } else {
                    unknown.push(format!("labimg {command} {flag}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "README.md shows flags that `--help` does not list: {unknown:?}"
    );
    // Not vacuous: the README's build examples were found and checked.
    for flag in ["--profile", "--node", "--embed-secrets", "--sign-key"] {
        assert!(
            checked.contains(&format!("build {flag}")),
            "build {flag} not checked; checked: {checked:?}"
        );
    }
}

#[test]
fn flag_scanner() {
    assert_eq!(
        flags("labimg profile list|show [--resolved]|validate --set=a=b x--y"),
        ["--resolved", "--set"]
    );
    assert!(lists("  --pool-start <X>", "--pool-start"));
    assert!(!lists("  --pool-start <X>", "--pool"));
}
