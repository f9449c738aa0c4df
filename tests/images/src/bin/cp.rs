//! `cp [-f] SRC DST` for the flannel CNI plugin image, whose init container runs upstream's
//! `cp -f /flannel /opt/cni/bin/flannel` (tests/kube/addons/kube-flannel.yml). A scratch image has
//! no coreutils; this copies into a temporary file next to DST and renames it over DST, so a plugin
//! binary the kubelet is running at that moment (ETXTBSY for an in-place write) is replaced safely.
//! The mode of SRC is kept.

use std::path::Path;

fn copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    let dst = if dst.is_dir() {
        dst.join(src.file_name().unwrap_or_default())
    } else {
        dst.to_path_buf()
    };
    let name = dst.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dst.with_file_name(format!(".{name}.cp-tmp"));
    std::fs::copy(src, &tmp)?; // copies the permission bits too
    std::fs::rename(&tmp, &dst).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn main() {
    // -f (force) is what the manifest passes; replacing is what this always does.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "-f").collect();
    let [src, dst] = &args[..] else {
        eprintln!("usage: cp [-f] SRC DST");
        std::process::exit(2);
    };
    if let Err(e) = copy(Path::new(src), Path::new(dst)) {
        eprintln!("cp: cannot copy {src} to {dst}: {e}");
        std::process::exit(1);
    }
}
