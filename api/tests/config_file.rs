//! Config-file errors name the place and the key, never a value: the file holds the password or
//! token, and the message goes to imgbuild's stderr and the controller's log (issue #10 item 2).

#![cfg(feature = "client")]

use cloudsigma_api::client::{resolve_with, ConfigFile, ConfigOverrides};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

const SECRET: &str = "hunter2-Xq9";

fn error_of(text: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cs-api-cfgfile-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let f: PathBuf = dir.join("config.toml");
    std::fs::write(&f, text).unwrap();
    let ov = ConfigOverrides {
        config_file: Some(f),
        ..Default::default()
    };
    let e = resolve_with(&ov, &|_| None, None)
        .expect_err("a broken file is refused")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!e.contains(SECRET), "the value leaked: {e}");
    e
}

/// `e` contains every one of `parts`.
fn assert_says(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "{p:?} missing from: {e}");
    }
}

#[test]
fn a_misspelt_key_is_named_with_its_place_but_not_its_value() {
    let e = error_of(&format!("region = \"zrh\"\npasword = \"{SECRET}\"\n"));
    assert_says(
        &e,
        &[
            "config.toml: line 2, column 1",
            "`pasword`",
            "did you mean `password`",
        ],
    );
}

#[test]
fn an_unknown_key_unlike_any_known_one_is_not_named() {
    // a secret pasted on the left of `=` (or as a table name) is a key to the parser
    for text in [
        format!("region = \"zrh\"\n{SECRET} = 1\n"),
        format!("region = \"zrh\"\n[{SECRET}]\nx = 1\n"),
    ] {
        assert_says(&error_of(&text), &["line 2", "unknown key", "max_attempts"]);
    }
}

#[test]
fn syntax_errors_keep_the_place_and_drop_the_line() {
    let cases = [
        // unquoted value
        (format!("password = {SECRET}\n"), "line 1, column 12"),
        // unterminated string
        (
            format!("username = \"u\"\npassword = \"{SECRET}\n"),
            "line 2",
        ),
        // a secret alone on a line
        (format!("region = \"zrh\"\n{SECRET}\n"), "line 2"),
        // junk after the value
        (format!("token = \"{SECRET}\" x\n"), "line 1"),
        // a bad escape inside the secret
        (format!("password = \"{SECRET}\\q\"\n"), "line 1"),
        // a key repeated: the parser quotes the key, here a known one
        (
            format!("password = \"a\"\npassword = \"{SECRET}\"\n"),
            "line 2, column 1",
        ),
        // the dotted-key messages quote keys that may be anything
        (format!("{SECRET} = 1\n{SECRET}.x = 2\n"), "line 2"),
        (format!("password.{SECRET} = 1\n"), "line 1"),
    ];
    for (text, at) in cases {
        let e = error_of(&text);
        assert!(e.contains(at), "{text:?}: {e}");
    }
    let e = error_of("password = \"a\"\npassword = \"b\"\n");
    assert!(e.contains("duplicate key `password`"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_not_the_value() {
    for (text, key, at) in [
        (
            format!("max_attempts = \"{SECRET}\"\n"),
            "max_attempts",
            "line 1, column 16",
        ),
        (
            format!("region = \"zrh\"\ntimeout_secs = \"{SECRET}\"\n"),
            "timeout_secs",
            "line 2, column 16",
        ),
        (
            format!("password = [\"{SECRET}\"]\n"),
            "password",
            "line 1, column 12",
        ),
        (
            format!("password = {{ a = \"{SECRET}\" }}\n"),
            "password",
            "line 1, column 12",
        ),
        (
            format!("[password]\nx = \"{SECRET}\"\n"),
            "password",
            "line 1",
        ),
    ] {
        let e = error_of(&text);
        assert!(e.contains(&format!("`{key}` must be")), "{text:?}: {e}");
        assert!(e.contains(at), "{text:?}: {e}");
    }
}

#[test]
fn a_url_that_does_not_parse_is_not_echoed_when_it_may_hold_credentials() {
    let e = error_of(&format!(
        "api_url = \"http://me:{SECRET}@exa mple.com/api/2.0/\"\ntoken = \"t\"\n"
    ));
    assert!(e.contains("invalid API URL"), "{e}");
}

#[test]
fn a_good_file_parses() {
    use cloudsigma_api::client::config_keys::{MAX_ATTEMPTS, PASSWORD, REGION, TIMEOUT_SECS};
    use cloudsigma_api::client::ConfigValue;
    use std::time::Duration;
    let c = ConfigFile::parse(
        "region = \"zrh\"\nusername = \"me@x\"\npassword = \"pw\"\ntimeout_secs = 5\nmax_attempts = 3\n",
    )
    .unwrap();
    assert_eq!(c.text(&REGION), Some("zrh"));
    assert_eq!(c.text(&PASSWORD), Some("pw"));
    assert_eq!(
        c.get(&TIMEOUT_SECS),
        Some(&ConfigValue::Seconds(Duration::from_secs(5)))
    );
    assert_eq!(c.get(&MAX_ATTEMPTS), Some(&ConfigValue::Count(3)));
    assert_eq!(
        ConfigFile::parse("timeout_secs = 2.5\n")
            .unwrap()
            .get(&TIMEOUT_SECS),
        Some(&ConfigValue::Seconds(Duration::from_millis(2500)))
    );
    let e = ConfigFile::parse("max_attempts = -3\n").unwrap_err();
    assert!(e.contains("between 1 and 100"), "{e}");
}
