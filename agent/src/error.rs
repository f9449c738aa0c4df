//! Why a bootstrap step failed, typed: the command with its exit status, the path with its I/O
//! error. The status file and the console show the `Display` text (docs/agent.md), so every
//! variant says what failed and where, and none carries a secret (file contents, hashes, tokens).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read, written or created.
    #[error("{op}{}: {source}", .path.display())]
    Io {
        op: IoOp,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tool could not be started at all.
    #[error("{tool} not found on PATH")]
    NotFound { tool: String },
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for {tool}: {source}")]
    Wait {
        tool: String,
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed. `command` is its command line (callers pass no secrets in argv);
    /// `detail` is what helps next: the tool's last stderr line, or the state that made us run it.
    #[error("{command} exited with {}{detail}", Exit(.status))]
    Failed {
        command: String,
        status: ExitStatus,
        detail: String,
    },
    /// bootcmd, runcmd or a user-data script exited non-zero; its output is in `output` (0600),
    /// never in the log: it may hold the join token.
    #[error("{name} script exited with {status} (see {})", .output.display())]
    Script {
        name: String,
        status: ExitStatus,
        output: PathBuf,
    },
    #[error("device {device} does not exist")]
    NoDevice { device: String },
    #[error("the bootstrap commands finished but {} was not created (the data's '&& echo success > {}' did not run: see {})", .marker.display(), crate::paths::MARKER, .output.display())]
    MarkerMissing { marker: PathBuf, output: PathBuf },
    #[error(transparent)]
    Context(#[from] cloudsigma_api::context::ContextError),
    /// The context's `uuid` is not a UUID: it would name the stamp file (`instance-<uuid>.done`).
    #[error("the context's uuid {value:?} is not a UUID (8-4-4-4-12 hexadecimal digits): refused, it would name this instance's stamp file in {}", crate::paths::STATE_DIR)]
    BadInstanceId { value: String },
    #[error(transparent)]
    UserData(#[from] crate::userdata::UserDataError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error(transparent)]
    Config(#[from] crate::yaml::ConfigError),
    /// The step will not go on with what the data asks (formatting a used disk, an unusable host
    /// name, content that does not decode, an owner the root does not know...): the message says
    /// what and why. The decisions behind it are pure functions tested on their own messages.
    #[error("{0}")]
    Refused(String),
    /// Another error, prefixed with what was being done (`fs_setup[0]`, `disk_setup /dev/sdb`).
    #[error("{context}: {source}")]
    In {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn io(op: IoOp, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Prefix the error with what was being done.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::In {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// What was being done to a path, as the message's first words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Reading or writing a file whose role is clear from the step (`/etc/fstab: …`).
    Access,
    Read,
    ReadContext,
    Write,
    Update,
    Open,
    Create,
    SetHostname,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Access => "",
            IoOp::Read => "cannot read ",
            IoOp::ReadContext => "cannot read context file ",
            IoOp::Write => "cannot write ",
            IoOp::Update => "cannot update ",
            IoOp::Open => "cannot open ",
            IoOp::Create => "cannot create ",
            IoOp::SetHostname => "cannot set the hostname via ",
        })
    }
}

/// `status 1` or `a signal`: the words the step messages have always used for a tool's exit.
struct Exit<'a>(&'a ExitStatus);

impl fmt::Display for Exit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.code() {
            Some(c) => write!(f, "status {c}"),
            None => f.write_str("a signal"),
        }
    }
}

/// Attach a path to an I/O result.
pub trait IoContext<T> {
    fn at(self, op: IoOp, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: IoOp, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn messages_name_command_status_and_path() {
        let e = Error::Failed {
            command: "mkfs.ext4 -L etcd_disk /dev/sdb1".into(),
            status: ExitStatus::from_raw(1 << 8),
            detail: ": device is busy".into(),
        }
        .context("fs_setup[0]");
        assert_eq!(
            e.to_string(),
            "fs_setup[0]: mkfs.ext4 -L etcd_disk /dev/sdb1 exited with status 1: device is busy"
        );
        let e = Error::Script {
            name: "runcmd".into(),
            status: ExitStatus::from_raw(1 << 8),
            output: "/var/log/out.log".into(),
        };
        assert_eq!(
            e.to_string(),
            "runcmd script exited with exit status: 1 (see /var/log/out.log)"
        );
        let e = Error::io(
            IoOp::Write,
            "/etc/a",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(e.to_string().starts_with("cannot write /etc/a: "), "{e}");
    }
}
