// The shared build script: the version string with the git commit (see the file).
include!("../buildsrc/git_version.rs");
