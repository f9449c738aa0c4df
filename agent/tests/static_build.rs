//! The documented static build command (docs/agent.md) produces a static, stripped binary of at
//! most 5 MB that runs. Uses its own target dir: the outer `cargo test` holds the lock on its own.

use std::process::Command;

#[test]
fn static_release_build() {
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp.parent().expect("target dir").join("static-build-test");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "cloudsigma-agent",
            "--bin",
            "cloudsigma-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(st.success(), "static build failed");
    let bin = target.join("x86_64-unknown-linux-gnu/release/cloudsigma-agent");
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(size <= 5_000_000, "binary is {size} bytes, target <= 5 MB");

    // Static and stripped, checked from the ELF headers (no dependency on `file`):
    // no PT_INTERP program header (no dynamic loader), no SHT_SYMTAB section (stripped).
    let elf = std::fs::read(&bin).unwrap();
    let (interp, symtab) = elf_facts(&elf);
    assert!(!interp, "has a PT_INTERP header: dynamically linked");
    assert!(!symtab, "has a .symtab: not stripped");
    let ldd = Command::new("ldd")
        .arg(&bin)
        .output()
        .expect("ldd (libc-bin)");
    let ldd_out = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        ldd_out.contains("statically linked") || ldd_out.contains("not a dynamic executable"),
        "{ldd_out}"
    );
    if let Ok(f) = Command::new("file").arg(&bin).output() {
        println!("file: {}", String::from_utf8_lossy(&f.stdout).trim());
    }
    println!("static binary: {} bytes", size);

    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("cloudsigma-agent "));
    // No libudev, no Python: nothing dynamic at all, checked above.
}

/// (has PT_INTERP, has SHT_SYMTAB) of a little-endian ELF64 file.
fn elf_facts(b: &[u8]) -> (bool, bool) {
    assert_eq!(&b[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(b[4], 2, "not ELF64");
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    let (shoff, shentsize, shnum) = (u64at(0x28), u16at(0x3a), u16at(0x3c));
    let interp = (0..phnum).any(|i| u32at(phoff + i * phentsize) == 3);
    let symtab = (0..shnum).any(|i| u32at(shoff + i * shentsize + 4) == 2);
    (interp, symtab)
}
