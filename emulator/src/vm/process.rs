//! The one way the backend runs a short-lived tool (`qemu-img`): arguments as `OsStr` (paths are
//! never lossily converted), stdin closed, a non-zero exit reported with the tool's stderr.
//! QEMU itself is a long-lived child and is started in `run.rs`.

use super::err;
use crate::backend::BackendError;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Output, Stdio};

fn describe(tool: &Path, args: &[&OsStr]) -> String {
    let mut s = tool.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn checked(
    tool: &Path,
    args: &[&OsStr],
    out: std::io::Result<Output>,
) -> Result<Vec<u8>, BackendError> {
    let out = out.map_err(|e| {
        err(format!(
            "cannot run {}: {e} (install qemu-utils: scripts/install-deps)",
            tool.display()
        ))
    })?;
    if !out.status.success() {
        return Err(err(format!(
            "{} failed ({}): {}",
            describe(tool, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Runs `tool args…` to completion; its stdout on success.
pub(crate) async fn run(tool: &Path, args: &[&OsStr]) -> Result<Vec<u8>, BackendError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    checked(tool, args, out)
}

/// [`run`] for callers outside the async runtime (configuration at startup).
pub(crate) fn run_blocking(tool: &Path, args: &[&OsStr]) -> Result<Vec<u8>, BackendError> {
    let out = std::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output();
    checked(tool, args, out)
}

fn info_args(image: &Path) -> [&OsStr; 4] {
    [
        OsStr::new("info"),
        OsStr::new("--output=json"),
        // -U: the image may be open in a running QEMU
        OsStr::new("-U"),
        image.as_os_str(),
    ]
}

fn parse_virtual_size(image: &Path, stdout: &[u8]) -> Result<u64, BackendError> {
    let v: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| {
        err(format!(
            "qemu-img info {}: unreadable output: {e}",
            image.display()
        ))
    })?;
    v.get("virtual-size")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| {
            err(format!(
                "qemu-img info {}: no virtual-size",
                image.display()
            ))
        })
}

/// The virtual size in bytes of a disk image (`qemu-img info`).
pub(crate) async fn virtual_size(qemu_img: &Path, image: &Path) -> Result<u64, BackendError> {
    let out = run(qemu_img, &info_args(image)).await?;
    parse_virtual_size(image, &out)
}

/// [`virtual_size`] outside the async runtime.
pub(crate) fn virtual_size_blocking(qemu_img: &Path, image: &Path) -> Result<u64, BackendError> {
    let out = run_blocking(qemu_img, &info_args(image))?;
    parse_virtual_size(image, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_tool_is_named_with_its_stderr() {
        let e = run(
            Path::new("sh"),
            &[OsStr::new("-c"), OsStr::new("echo boom >&2; exit 3")],
        )
        .await
        .unwrap_err();
        assert!(e.0.contains("sh -c") && e.0.contains("boom"), "{e}");
        let e = run_blocking(Path::new("/nonexistent/qemu-img"), &[]).unwrap_err();
        assert!(e.0.contains("/nonexistent/qemu-img"), "{e}");
        let out = run(
            Path::new("sh"),
            &[OsStr::new("-c"), OsStr::new("printf ok")],
        )
        .await
        .unwrap();
        assert_eq!(out, b"ok");
    }

    #[test]
    fn virtual_size_is_read_from_qemu_img_json() {
        let p = Path::new("/x.qcow2");
        assert_eq!(
            parse_virtual_size(p, br#"{"virtual-size": 42}"#).unwrap(),
            42
        );
        let e = parse_virtual_size(p, b"{}").unwrap_err();
        assert!(
            e.0.contains("/x.qcow2") && e.0.contains("virtual-size"),
            "{e}"
        );
    }
}
